"""Providers: embedders and LLM upstreams behind small Protocols; none owns an HTTP session."""
