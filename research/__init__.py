"""Finished one-off studies: not part of the product (see README.md)."""
