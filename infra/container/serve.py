"""The container's entry point: `python -m app`'s serving, with WEB_CONCURRENCY workers.

The image sets WEB_CONCURRENCY=1 (a container's cpu_count is the host's, not its CPU quota);
raise it with the CPUs the container gets. Settings are read once, a bad value exits with one
line, JSON log lines, keep-alive 30 s, graceful shutdown 20 s (app/serving.py).
"""

from __future__ import annotations

from app.__main__ import main
from app.serving import GRACEFUL_SHUTDOWN_SECONDS, KEEP_ALIVE_SECONDS

__all__ = ["GRACEFUL_SHUTDOWN_SECONDS", "KEEP_ALIVE_SECONDS", "main"]

if __name__ == "__main__":
    main()
