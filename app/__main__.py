"""`python -m app`: read settings, then serve with uvicorn; a bad setting exits with one line."""

from __future__ import annotations

import sys

from app.errors import StartupError
from app.logging import configure_logging
from app.serving import serve, worker_count
from app.settings import SettingsError, load_settings


def main() -> None:
    """Entry point of `make run` and of the container (WEB_CONCURRENCY worker processes)."""
    try:
        settings, workers = load_settings(), worker_count()
    except SettingsError as exc:
        print(f"sentinel: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    configure_logging(settings.log_level)
    try:
        serve(settings, workers)
    except StartupError as exc:  # the embedded Redis the workers share did not start
        print(f"sentinel: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
