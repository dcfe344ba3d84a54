"""HTTP: thin handlers that decode, call the service and encode."""
