"""The one place where exceptions become `{"error": {"code", "message"}}` responses."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import ExceptionHandlersMap

from app.errors import SentinelError
from app.logging import REQUEST_ID

log = logging.getLogger("sentinel.errors")


def error_response(
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    param: str | None = None,
) -> Response[dict[str, Any]]:
    """A JSON error body: Sentinel's `{code, message}`, plus OpenAI's `type` and `param`."""
    return Response(
        {"error": error_body(status, code, message, param)},
        status_code=status,
        headers=headers,
        media_type="application/json",
    )


def error_body(status: int, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    """The inside of an error response (also sent as an SSE event when a stream fails)."""
    return {"code": code, "message": message, "type": _error_type(status), "param": param}


def _error_type(status: int) -> str:
    """OpenAI's error `type` for a status, so its SDKs raise the matching exception class."""
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 404:
        return "not_found_error"
    if status == 429:
        return "rate_limit_error"
    if status < 500:
        return "invalid_request_error"
    return "api_error"


def sentinel_error(_: Request[Any, Any, Any], exc: SentinelError) -> Response[dict[str, Any]]:
    """Our own errors carry their status, code and message."""
    if exc.status_code >= 500:
        log.warning("request failed: %s", exc.code)
    return error_response(exc.status_code, exc.code, exc.message, exc.headers, exc.param)


def validation_error(
    _: Request[Any, Any, Any], exc: ValidationException
) -> Response[dict[str, Any]]:
    """Body decoding errors (malformed JSON, wrong types, unknown fields, out of range)."""
    return error_response(400, "INVALID_REQUEST", _validation_message(exc))


def http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    """Framework errors (404, 405, 413 body too large...) in our shape."""
    status = exc.status_code
    try:
        code = "INVALID_REQUEST" if status == 400 else HTTPStatus(status).name
    except ValueError:
        code = "HTTP_ERROR"
    return error_response(status, code, str(exc.detail), dict(exc.headers or {}))


def unexpected_error(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    """A bug: log the traceback, answer 500 without it."""
    log.error("unhandled error", exc_info=exc)
    return error_response(
        500,
        "INTERNAL_ERROR",
        f"internal error (request id {REQUEST_ID.get()}); see the server log",
    )


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    SentinelError: sentinel_error,
    ValidationException: validation_error,
    HTTPException: http_error,
    Exception: unexpected_error,
}


def _validation_message(exc: ValidationException) -> str:
    parts = []
    for item in exc.extra if isinstance(exc.extra, list) else []:
        if isinstance(item, dict):
            key = item.get("key")
            message = str(item.get("message", ""))
            # "data" is Litestar's name for the whole body, not a field the client sent.
            parts.append(f"{key}: {message}" if key and key != "data" else message)
    return "; ".join(parts) or str(exc.detail)
