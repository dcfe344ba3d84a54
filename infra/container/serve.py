"""The container's entry point: Sentinel under uvicorn with WEB_CONCURRENCY worker processes.

`python -m app` serves from one process. This starts the same way (settings read once, a bad
value exits with one line, JSON log lines, the same keep-alive and graceful-shutdown timeouts)
but hands uvicorn the ASGI factory `app.main:create_app`, so it can run several workers.
"""

from __future__ import annotations

import os
import sys

import uvicorn
from litestar import Litestar

from app.logging import configure_logging
from app.main import create_app as create_sentinel
from app.settings import SettingsError, load_settings

# As in app/__main__.py: idle keep-alive connections close after 30 s (above the 15 s probe
# interval of most proxies), and a stop waits up to 20 s for requests in flight, below the
# 30 s that docker-compose.yml and fly.toml give before SIGKILL.
KEEP_ALIVE_SECONDS = 30
GRACEFUL_SHUTDOWN_SECONDS = 20


def create_app() -> Litestar:
    """ASGI factory, called in every worker: JSON logging there too, then Sentinel's app."""
    settings = load_settings()
    configure_logging(settings.log_level)
    return create_sentinel(settings)


def workers() -> int:
    """WEB_CONCURRENCY (uvicorn's convention), default 1: one process per container."""
    raw = os.environ.get("WEB_CONCURRENCY", "").strip() or "1"
    if not raw.isdigit() or not 1 <= int(raw) <= 64:
        raise SettingsError(f"WEB_CONCURRENCY: expected a whole number from 1 to 64, got {raw!r}")
    return int(raw)


def main() -> None:
    """Validate the settings, then serve."""
    try:
        settings, count = load_settings(), workers()
    except SettingsError as exc:
        print(f"sentinel: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    configure_logging(settings.log_level)
    uvicorn.run(
        "serve:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=count,
        log_config=None,  # every worker's logging comes from create_app()
        access_log=False,  # the request log middleware writes one line per request
        lifespan="on",
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        server_header=False,
    )


if __name__ == "__main__":
    main()
