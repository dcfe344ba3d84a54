"""Tools that rebuild the model files the service ships (see README.md)."""
