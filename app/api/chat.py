"""The OpenAI-compatible gateway: POST /v1/chat/completions and GET /v1/models."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.response import Stream

from app.api.controls import from_headers
from app.api.errors import ERROR_RESPONSES, error_body
from app.api.openai_schemas import DONE, ChatCompletionRequest, ChunkWriter, completion, sse
from app.errors import SentinelError
from app.providers.upstreams.base import ChatDelta
from app.service.query import Answer, QueryService, StreamedAnswer

log = logging.getLogger("sentinel.api")

_CACHE = {"exact": "HIT-EXACT", "semantic": "HIT-SEMANTIC", "miss": "MISS"}


def cache_headers(answer: Answer) -> dict[str, str]:
    """The X-Sentinel-* facts of an answer, on every response that carries one."""
    headers = {
        # BYPASS: Redis was down, slow or its breaker open; the provider answered.
        "X-Sentinel-Cache": "BYPASS" if answer.bypass else _CACHE[answer.match],
        "X-Sentinel-Entry": answer.entry_id,
        "X-Sentinel-Provider": answer.provider,
    }
    if answer.similarity is not None:
        headers["X-Sentinel-Similarity"] = f"{answer.similarity:.6f}"
    if answer.waited:
        headers["X-Sentinel-Waited"] = "true"  # answered from an identical request in flight
    return headers


@post("/v1/chat/completions", status_code=200, responses=ERROR_RESPONSES)
async def chat_completions(
    request: Request[Any, Any, Any],
    data: JSONBody[ChatCompletionRequest],
    service: NamedDependency[QueryService],
    caller_tenant: NamedDependency[str],
) -> Response[dict[str, Any]] | Stream:
    """OpenAI's Chat Completions, answered from the cache when the same question was asked."""
    ask = msgspec.structs.replace(data.to_ask(), **from_headers(request.headers))
    ask = msgspec.structs.replace(ask, tenant=caller_tenant)
    if not data.stream:
        answer = await service.answer(ask)
        return Response(completion(answer), headers=cache_headers(answer))
    streamed = await service.stream(ask)
    include_usage = data.stream_options is not None and data.stream_options.include_usage
    writer = ChunkWriter(streamed.head, include_usage=include_usage)
    return event_stream(streamed, writer.event, end=lambda: DONE)


def event_stream(
    streamed: StreamedAnswer,
    encode: Callable[[ChatDelta], bytes],
    *,
    end: Callable[[], bytes],
    start: bytes = b"",
) -> Stream:
    """SSE of a streamed answer; a failure mid-stream becomes an error event (and no end)."""

    async def events() -> AsyncIterator[bytes]:
        if start:
            yield start
        try:
            async for delta in streamed.deltas:
                event = encode(delta)
                if event:
                    yield event
        except SentinelError as exc:
            # Headers are gone already: the error travels as an event, OpenAI's way. The
            # service stored nothing.
            log.warning("stream failed: %s", exc.code)
            yield sse({"error": error_body(exc.status_code, exc.code, exc.message, exc.param)})
            return
        yield end()

    return Stream(
        events(),
        media_type="text/event-stream",
        headers={**cache_headers(streamed.head), "Cache-Control": "no-cache"},
    )


@get("/v1/models", cache=False, responses=ERROR_RESPONSES)
async def models(service: NamedDependency[QueryService]) -> dict[str, Any]:
    """Routable `provider/model` ids, in OpenAI's list shape."""
    return {
        "object": "list",
        "data": [
            {"id": model_id, "object": "model", "created": 0, "owned_by": model_id.split("/")[0]}
            for model_id in service.providers.models()
        ],
    }
