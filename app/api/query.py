"""POST /v1/query: answer a prompt from the cache or the provider, whole or streamed."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.response import Stream

from app.api.auth import tenant_of
from app.api.controls import from_headers
from app.api.errors import ERROR_RESPONSES
from app.api.fast import cache_hits, prefetched
from app.api.openai_schemas import sse
from app.api.responses import cache_headers, event_stream
from app.api.schemas import QueryRequest, refuse_control_characters
from app.providers.upstreams.base import ChatDelta
from app.service.answers import Answer
from app.service.plan import Ask
from app.service.query import QueryService

# Known only once a miss has been streamed, so not in the `meta` event.
_AFTER_STREAM = {"response", "usage", "cost_usd", "saved_usd", "latency_ms", "tool_calls"}


def _fast_ask(body: bytes, tenant: str, controls: dict[str, Any]) -> Ask | None:
    """The Ask `query` builds, for the exact-hit fast path (None: a stream)."""
    data = msgspec.json.decode(body, type=QueryRequest)
    if data.stream:
        return None
    refuse_control_characters(data.prompt, "prompt")
    return data.to_ask(tenant=tenant, header_controls=controls)


@post(
    "/v1/query",
    status_code=200,
    responses=ERROR_RESPONSES,
    middleware=[cache_hits(_fast_ask, msgspec.json.encode)],
)
async def query(
    request: Request[Any, Any, Any],
    data: JSONBody[QueryRequest],
    service: NamedDependency[QueryService],
) -> Response[Answer] | Stream:
    """Answer a prompt: exact hit, semantic hit, or a fresh provider answer.

    With `"stream": true` the answer comes as server-sent events: `meta` (where it comes
    from), `data: {"text": ...}` pieces, then `done` with the whole text.
    """
    refuse_control_characters(data.prompt, "prompt")
    ask = data.to_ask(tenant=tenant_of(request), header_controls=from_headers(request.headers))
    if not data.stream:
        answer = await service.answer(ask, prefetched(request.state))
        return Response(answer, headers=cache_headers(answer))
    streamed = await service.stream(ask)
    meta = {
        k: v for k, v in msgspec.structs.asdict(streamed.head).items() if k not in _AFTER_STREAM
    }
    parts: list[str] = []

    def encode(delta: ChatDelta) -> bytes:
        if not delta.content:
            return b""
        parts.append(delta.content)
        return sse({"text": delta.content})

    def done() -> bytes:
        return sse({"response": "".join(parts)}, event="done")

    return event_stream(streamed, encode, end=done, start=sse(meta, event="meta"))
