"""The cache-hit fast path of POST /v1/chat/completions and POST /v1/query.

Hits are most of a busy cache's traffic, and Litestar's per-request machinery (body
extraction, signature model, dependency resolution, Response building) cost about as much CPU
as everything Sentinel does for an exact hit. This route middleware answers hits itself,
between the app's middlewares (request id, access log, the 415 check: they run for it as for
any request) and the route: it admits the caller as `authenticate` does, reads the body,
builds the same Ask the handler would, and makes the service's lookup (exact, alias, then
semantic: `QueryService.cached_hit`). On a hit it sends the response the handler would have
sent; in every other case it hands the request to the route with the body replayed, and with
what it already did kept in the request's state: the admission (`auth.admit_into`: a refusal
is raised by `authenticate`, a rate limit counts once) and the lookup (`Prefetched`: neither
Redis nor the embedder is asked twice; a failure remembered for the request is raised by the
handler). Anything it does not handle itself (a stream, an invalid body, a refused key, a
miss, a bypassed cache, a body sent in pieces past MAX_BODY_BYTES) takes the normal path,
which decides as it always has.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from litestar.types import ASGIApp, Receive, ReceiveMessage, Scope, Send

from app.api import auth
from app.api.controls import from_headers
from app.api.errors import MAX_BODY_BYTES
from app.api.responses import cache_headers
from app.service.answers import Answer
from app.service.exact import Prefetched
from app.service.plan import Ask, Plan
from app.service.query import QueryService

# Where the fast path leaves its lookup for the handler (the request's own state).
PREFETCHED_STATE = "sentinel_prefetched"

# A request's Ask from (body, tenant, the headers' cache controls); None for a request the fast
# path leaves alone (a stream); raises for a body the route must refuse.
AskOf = Callable[[bytes, str, dict[str, Any]], Ask | None]
# Plans remembered per app (create_app puts the dict in the app's state), at most this many,
# for bodies up to this size: a plan is pure (the same route, body, tenant and controls give
# the same plan), and a repeated question is what an exact hit usually is. Each kept plan holds
# its body twice (the key, the request inside the plan), so these bound the memory per worker
# at ~32 MB; a chat question is well under 4 KiB, a longer body is planned every time.
PLANS_KEPT = 4096
PLAN_BODY_BYTES = 4 * 1024
# The response body of an answer, as the route's handler would encode it.
Render = Callable[[Answer], bytes]


def prefetched(state: Mapping[str, Any]) -> Prefetched | None:
    """The fast path's lookup for this request, for the handler to pass to the service."""
    found = state.get(PREFETCHED_STATE)
    return found if isinstance(found, Prefetched) else None


def cache_hits(ask_of: AskOf, render: Render) -> Callable[[ASGIApp], ASGIApp]:
    """The fast path as a Litestar route middleware (the route's `middleware=[...]`)."""

    def wrap(app: ASGIApp) -> ASGIApp:  # Litestar passes the route's own stack as `app`
        route = app

        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            app_state = scope["app"].state
            headers = _headers(scope)
            length = headers.get("content-length", "")
            if (
                not app_state.fast_path
                or scope.get("method") != "POST"
                or not length.isdigit()
                or int(length) > MAX_BODY_BYTES  # refused before it is read, by the route
            ):
                await route(scope, receive, send)
                return
            state: dict[str, Any] = scope["state"]
            try:
                tenant = await auth.admit_into(state, app_state.access, headers)
            except Exception:
                await route(scope, receive, send)  # `authenticate` raises the refusal
                return
            messages, body = await _read(receive)
            replay = _replayed(messages, receive)
            service: QueryService = app_state.service
            # The request's latency counts from its plan, as in QueryService.answer.
            started = time.perf_counter()
            try:
                plan = None if body is None else _plan(scope, service, body, tenant, headers)
            except Exception:
                plan = None  # the route refuses it again, as it would have
            if plan is None or not plan.read_cache:
                await route(scope, replay, send)
                return
            found = await service.cached_hit(plan, started)
            if isinstance(found, Prefetched):
                state[PREFETCHED_STATE] = found
                await route(scope, replay, send)
                return
            await _respond(send, render(found), cache_headers(found))

        return middleware

    def _plan(
        scope: Scope, service: QueryService, body: bytes, tenant: str, headers: dict[str, str]
    ) -> Plan | None:
        """The request's plan (None: a stream), remembered for the next identical request."""
        controls = from_headers(headers)
        plans: dict[tuple[Any, ...], Plan] = scope["app"].state.exact_plans
        key = (scope["path"], body, tenant, *sorted(controls.items()))
        if (plan := plans.get(key)) is not None:
            return plan
        ask = ask_of(body, tenant, controls)
        if ask is None:
            return None
        plan = service.plan(ask)
        if len(body) <= PLAN_BODY_BYTES:
            if len(plans) >= PLANS_KEPT:
                plans.clear()
            plans[key] = plan
        return plan

    return wrap


def _headers(scope: Scope) -> dict[str, str]:
    """Header name (lower case) -> its first value, as Litestar's `request.headers.get`."""
    headers: dict[str, str] = {}
    for name, value in scope["headers"]:
        headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
    return headers


async def _read(receive: Receive) -> tuple[list[ReceiveMessage], bytes | None]:
    """The request body's messages and the body (None if the client left, or it is too big)."""
    messages: list[ReceiveMessage] = []
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, None
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > MAX_BODY_BYTES:
            return messages, None
        if not message.get("more_body", False):
            return messages, chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _replayed(messages: list[ReceiveMessage], receive: Receive) -> Receive:
    """`receive` that hands the messages already read first, then the client's own."""
    pending = iter(messages)

    async def replay() -> ReceiveMessage:
        for message in pending:
            return message
        return await receive()

    return replay


async def _respond(send: Send, body: bytes, headers: dict[str, str]) -> None:
    """A 200 JSON response, with the same headers Litestar's Response would send."""
    raw = [
        (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()
    ]
    raw += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})
