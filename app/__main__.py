"""`python -m app`: read settings, then serve with uvicorn; a bad setting exits with one line."""

from __future__ import annotations

import sys

import uvicorn

from app.logging import configure_logging
from app.main import create_app
from app.settings import SettingsError, load_settings


def main() -> None:
    """Entry point of `make run` and of the container."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"sentinel: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    configure_logging(settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_keep_alive=30,
        timeout_graceful_shutdown=20,
    )


if __name__ == "__main__":
    main()
