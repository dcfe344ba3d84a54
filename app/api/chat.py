"""The OpenAI-compatible gateway: POST /v1/chat/completions and GET /v1/models."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.response import Stream

from app.api.auth import tenant_of
from app.api.controls import from_headers
from app.api.errors import ERROR_RESPONSES
from app.api.fast import cache_hits, prefetched
from app.api.openai_schemas import DONE, ChatCompletionRequest, ChunkWriter, completion
from app.api.responses import cache_headers, event_stream
from app.service.answers import Answer
from app.service.plan import Ask
from app.service.query import QueryService


def _fast_ask(body: bytes, tenant: str, controls: dict[str, Any]) -> Ask | None:
    """The Ask `chat_completions` builds, for the exact-hit fast path (None: a stream)."""
    data = msgspec.json.decode(body, type=ChatCompletionRequest)
    if data.stream:
        return None
    return msgspec.structs.replace(data.to_ask(), **controls, tenant=tenant)


def _body(answer: Answer) -> bytes:
    return msgspec.json.encode(completion(answer))


@post(
    "/v1/chat/completions",
    status_code=200,
    responses=ERROR_RESPONSES,
    middleware=[cache_hits(_fast_ask, _body)],
)
async def chat_completions(
    request: Request[Any, Any, Any],
    data: JSONBody[ChatCompletionRequest],
    service: NamedDependency[QueryService],
) -> Response[dict[str, Any]] | Stream:
    """OpenAI's Chat Completions, answered from the cache when the same question was asked."""
    ask = msgspec.structs.replace(data.to_ask(), **from_headers(request.headers))
    ask = msgspec.structs.replace(ask, tenant=tenant_of(request))
    if not data.stream:
        answer = await service.answer(ask, prefetched(request.state))
        return Response(completion(answer), headers=cache_headers(answer))
    streamed = await service.stream(ask)
    include_usage = data.stream_options is not None and data.stream_options.include_usage
    writer = ChunkWriter(streamed.head, include_usage=include_usage)
    return event_stream(streamed, writer.event, end=lambda: DONE)


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
