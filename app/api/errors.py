"""The one place where exceptions become `{"error": {"code", "message"}}` responses."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import ResponseSpec
from litestar.types import ExceptionHandlersMap

from app.errors import PromptTooLarge, SentinelError
from app.logging import REQUEST_ID

log = logging.getLogger("sentinel.errors")

# Prompts are capped by MAX_PROMPT_CHARS (32k chars, up to ~128 KB of UTF-8); 1 MiB leaves
# room for JSON escaping while refusing absurd bodies with a 413 before they are read.
MAX_BODY_BYTES = 1024 * 1024


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
    if status == 413:  # the body is over MAX_BODY_BYTES, refused before it was read
        return error_response(
            413,
            PromptTooLarge.code,
            f"the request body is over {MAX_BODY_BYTES // (1024 * 1024)} MiB; prompts are "
            "limited to MAX_PROMPT_CHARS characters",
        )
    try:
        code = "INVALID_REQUEST" if status == 400 else HTTPStatus(status).name
    except ValueError:
        code = "HTTP_ERROR"
    return error_response(status, code, str(exc.detail), dict(exc.headers or {}))


def unexpected_error(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    """A bug: log the traceback, answer 500 without it (unless the body could not be decoded)."""
    if _while_decoding_the_body(exc):
        if isinstance(exc, UnicodeDecodeError):
            return error_response(400, "INVALID_REQUEST", "the request body is not valid UTF-8")
        if isinstance(exc, RecursionError):
            return error_response(400, "INVALID_REQUEST", "the request JSON is nested too deeply")
    log.error("unhandled error", exc_info=exc)
    return error_response(
        500,
        "INTERNAL_ERROR",
        f"internal error (request id {REQUEST_ID.get()}); see the server log",
    )


class ErrorDetail(msgspec.Struct, kw_only=True):
    """The error: Sentinel's code and message, OpenAI's type and param."""

    code: str
    message: str
    type: str
    param: str | None


class ErrorBody(msgspec.Struct, kw_only=True):
    """Every error response's body."""

    error: ErrorDetail


# Documented on every route, so the OpenAPI schema describes the bodies clients really get
# (Litestar's default 400 schema is its own validation shape, which we replace).
ERROR_RESPONSES: dict[int, ResponseSpec] = {
    status: ResponseSpec(data_container=ErrorBody, description=description)
    for status, description in (
        (400, "invalid request"),
        (401, "missing or invalid API key"),
        (403, "admin routes disabled"),
        (404, "not found"),
        (413, "body or prompt too large"),
        (415, "body is not JSON"),
        (429, "rate limited (see Retry-After)"),
        (502, "the provider failed"),
        (503, "a provider or the cache is not available"),
        (504, "the provider timed out"),
    )
}


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    SentinelError: sentinel_error,
    ValidationException: validation_error,
    HTTPException: http_error,
    Exception: unexpected_error,
}


def _while_decoding_the_body(exc: BaseException) -> bool:
    """Whether the error came out of Litestar's JSON body decoding (not out of our code)."""
    frame = exc.__traceback__
    while frame is not None:
        if frame.tb_frame.f_code.co_name == "decode_json":
            return True
        frame = frame.tb_next
    return False


def _validation_message(exc: ValidationException) -> str:
    parts = []
    for item in exc.extra if isinstance(exc.extra, list) else []:
        if isinstance(item, dict):
            key = item.get("key")
            message = str(item.get("message", ""))
            # "data" is Litestar's name for the whole body, not a field the client sent.
            if key == "data" and message == "'data'":
                message = "the request body is empty; send a JSON object"
            parts.append(f"{key}: {message}" if key and key != "data" else message)
    return "; ".join(parts) or str(exc.detail)
