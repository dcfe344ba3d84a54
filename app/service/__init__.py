"""The cache decision: exact → semantic → upstream → store. No web framework here."""
