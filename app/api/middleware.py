"""Request id and one access-log line per request (route, status, cache outcome, latency)."""

from __future__ import annotations

import logging
import os
import re
import time

import msgspec
from litestar.enums import ScopeType
from litestar.types import (
    ASGIApp,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Message,
    Receive,
    Scope,
    Send,
)

from app.logging import REQUEST_ID

log = logging.getLogger("sentinel.access")

_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_CACHE_HEADER = b"x-sentinel-cache"


def request_log_middleware(app: ASGIApp) -> ASGIApp:
    """Wrap an ASGI app: give each request an id, echo it, and log the outcome."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        request_id = _incoming_id(scope) or os.urandom(16).hex()
        token = REQUEST_ID.set(request_id)
        started = time.perf_counter()
        # What the log line says: set once the response starts (500 if it never does).
        status: int = 500
        cache: str | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status, cache
            if message["type"] == "http.response.start":
                headers = message.get("headers")
                # Litestar hands a fresh list per response: add to it rather than copy it.
                headers = headers if isinstance(headers, list) else list(headers or ())
                for name, value in headers:
                    if name == _CACHE_HEADER or name.lower() == _CACHE_HEADER:
                        cache = value.decode("latin-1")
                        break
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
                status = message["status"]
            await send(message)

        try:
            await app(scope, receive, send_with_id)
        finally:
            log.info(
                "request",
                extra={
                    "fields": {
                        "method": scope.get("method"),
                        "route": scope.get("path_template") or scope.get("path"),
                        "status": status,
                        "match": cache,
                        "latency_ms": round((time.perf_counter() - started) * 1000, 3),
                    }
                },
            )
            REQUEST_ID.reset(token)

    return middleware


def _incoming_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":  # ASGI servers hand header names in lower case
            candidate = value.decode("latin-1")
            return candidate if _SAFE_ID.match(candidate) else None
    return None


def json_body_middleware(app: ASGIApp) -> ASGIApp:
    """415 for a body sent with a non-JSON Content-Type, before anything reads it.

    No Content-Type at all is taken as JSON (some clients omit it); `curl -d` without `-H
    'content-type: application/json'` sends a form type and gets a message saying what to send.
    """

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP and scope.get("method") in ("POST", "PUT", "PATCH"):
            content_type = _header(scope, b"content-type")
            if content_type is not None and not _is_json(content_type):
                await _send_json(
                    send,
                    415,
                    {
                        "error": {
                            "code": "UNSUPPORTED_MEDIA_TYPE",
                            "message": "send the body as JSON with Content-Type: application/json",
                            "type": "invalid_request_error",
                            "param": None,
                        }
                    },
                )
                return
        await app(scope, receive, send)

    return middleware


def _header(scope: Scope, wanted: bytes) -> bytes | None:
    for name, value in scope.get("headers", ()):
        if name == wanted:  # ASGI servers hand header names in lower case
            return bytes(value)
    return None


def _is_json(content_type: bytes) -> bool:
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (
        media.startswith(b"application/") and media.endswith(b"+json")
    )


async def _send_json(send: Send, status: int, body: dict[str, object]) -> None:
    payload = msgspec.json.encode(body)
    start: HTTPResponseStartEvent = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
        ],
    }
    await send(start)
    done: HTTPResponseBodyEvent = {
        "type": "http.response.body",
        "body": payload,
        "more_body": False,
    }
    await send(done)
