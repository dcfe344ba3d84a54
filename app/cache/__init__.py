"""The cache: the only code that knows Redis keys, the hash layout and redisvl."""
