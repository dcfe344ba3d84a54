"""JSON-lines logging with the request id on every line; prompts and keys are never logged."""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from typing import Any

import msgspec

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "sentinel_request_id", default=None
)

_encoder = msgspec.json.Encoder()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id and extra fields."""

    # The formatted second of the last record: lines come many per second under load.
    _second: tuple[int, str] = (-1, "")

    def format(self, record: logging.LogRecord) -> str:
        """Render the record as a JSON line."""
        second = int(record.created)
        if second != self._second[0]:
            self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        doc: dict[str, Any] = {
            "time": f"{self._second[1]}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = REQUEST_ID.get()
        if request_id:
            doc["request_id"] = request_id
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            doc.update(fields)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return _encoder.encode(doc).decode()


class _DropStartupTraceback(logging.Filter):
    """Drop uvicorn's copy of a StartupError traceback: the lifespan already logged one line.

    Litestar hands uvicorn the formatted traceback of a failed start-up, and uvicorn logs it
    whole; for a configuration problem the one clear line is what the operator needs.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """False for the traceback uvicorn logs after a StartupError."""
        return not (
            record.name == "uvicorn.error" and "app.errors.StartupError" in record.getMessage()
        )


def configure_logging(level: str) -> None:
    """Send every logger (ours, uvicorn's, litestar's) through one JSON handler on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(_DropStartupTraceback())
    # No line shows a thread or process name: LogRecord need not look them up for every line.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "litestar"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # Our middleware writes one line per request with the request id; uvicorn's access log
    # would repeat it without one.
    logging.getLogger("uvicorn.access").disabled = True
