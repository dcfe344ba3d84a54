"""Request id and one access-log line per request (route, status, cache outcome, latency)."""

from __future__ import annotations

import logging
import re
import time
import uuid

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from app.logging import REQUEST_ID

log = logging.getLogger("sentinel.access")

_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def request_log_middleware(app: ASGIApp) -> ASGIApp:
    """Wrap an ASGI app: give each request an id, echo it, and log the outcome."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        request_id = _incoming_id(scope) or uuid.uuid4().hex
        token = REQUEST_ID.set(request_id)
        started = time.perf_counter()
        outcome: dict[str, object] = {"status": 500, "cache": None}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                for name, value in headers:
                    if name.lower() == b"x-sentinel-cache":
                        outcome["cache"] = value.decode("latin-1")
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
                outcome["status"] = message["status"]
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
                        "status": outcome["status"],
                        "match": outcome["cache"],
                        "latency_ms": round((time.perf_counter() - started) * 1000, 3),
                    }
                },
            )
            REQUEST_ID.reset(token)

    return middleware


def _incoming_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            return candidate if _SAFE_ID.match(candidate) else None
    return None
