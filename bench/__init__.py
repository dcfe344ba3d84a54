"""Sentinel benchmarks: `python -m bench.run` (KNN, end to end over HTTP, Redis memory)."""
