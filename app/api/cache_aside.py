"""Cache-aside for apps that call their LLM themselves: POST /v1/cache/lookup and /v1/cache/store.

Both take the request the app would send (a `prompt`, or chat `messages`, plus the model and
the parameters that shape the answer), scoped exactly as the gateway scopes it, so an entry
stored here is found by /v1/query and /v1/chat/completions and the other way round.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from litestar import Request, Response, post
from litestar.di import NamedDependency
from litestar.params import JSONBody

from app.api.auth import tenant_of
from app.api.controls import from_headers
from app.api.errors import ERROR_RESPONSES
from app.api.openai_schemas import ChatCompletionRequest, MessageIn, Tool, ToolCall
from app.api.responses import cache_headers
from app.api.schemas import ONE_YEAR
from app.errors import BadRequest
from app.providers.upstreams.base import ChatMessage, ChatResult
from app.service.answers import Answer
from app.service.plan import Ask
from app.service.query import QueryService


class CacheRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What identifies a cached answer: the question and its scope."""

    prompt: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    messages: list[MessageIn] | None = None
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] | None = None
    max_tokens: Annotated[int, msgspec.Meta(gt=0, le=1_000_000)] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    namespace: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._:-]{1,64}$")] | None = None
    similarity_threshold: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] | None = None

    def to_ask(self, headers: dict[str, str]) -> Ask:
        """The gateway's own request for the same question (validated the same way)."""
        if (self.prompt is None) == (self.messages is None):
            raise BadRequest("send either prompt or messages", param="prompt")
        messages = self.messages or [MessageIn(role="user", content=self.prompt)]
        chat = ChatCompletionRequest(
            model=self.model or "",
            messages=messages,
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_tokens,
            stop=self.stop,
            seed=self.seed,
            tools=self.tools,
            tool_choice=self.tool_choice,
            response_format=self.response_format,
        )
        controls = from_headers(headers)
        if self.namespace is not None:
            controls["namespace"] = self.namespace
        if self.similarity_threshold is not None:
            controls["similarity_threshold"] = self.similarity_threshold
        ask = msgspec.structs.replace(chat.to_ask(), **controls)
        return msgspec.structs.replace(ask, model=self.model)


class UsageIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    prompt_tokens: Annotated[int, msgspec.Meta(ge=0)] = 0
    completion_tokens: Annotated[int, msgspec.Meta(ge=0)] = 0


class CacheStoreRequest(CacheRequest, kw_only=True, forbid_unknown_fields=True):
    """The question, its scope, and the answer the app got."""

    response: str | None = None
    tool_calls: list[ToolCall] | None = None
    finish_reason: Literal["stop", "length", "tool_calls", "content_filter"] = "stop"
    usage: UsageIn | None = None
    # The model that answered, if not the one asked for (e.g. a dated snapshot).
    answered_by: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    ttl: Annotated[int, msgspec.Meta(gt=0, le=ONE_YEAR)] | None = None

    def result(self) -> ChatResult:
        if not self.response and not self.tool_calls:
            raise BadRequest("send the answer: response and/or tool_calls", param="response")
        usage = self.usage or UsageIn()
        return ChatResult(
            message=ChatMessage(
                role="assistant",
                content=self.response,
                tool_calls=(
                    None
                    if self.tool_calls is None
                    else [msgspec.to_builtins(c) for c in self.tool_calls]
                ),
            ),
            finish_reason=self.finish_reason,
            model=self.answered_by or (self.model or "").partition("/")[2] or (self.model or ""),
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            provider="cache-aside",
        )


class LookupResult(msgspec.Struct, kw_only=True):
    """Body of POST /v1/cache/lookup."""

    hit: bool
    answer: Answer | None


@post("/v1/cache/lookup", status_code=200, responses=ERROR_RESPONSES)
async def cache_lookup(
    request: Request[Any, Any, Any],
    data: JSONBody[CacheRequest],
    service: NamedDependency[QueryService],
) -> Response[LookupResult]:
    """The cached answer for this request (exact or guarded semantic), or `hit: false`."""
    ask = msgspec.structs.replace(data.to_ask(dict(request.headers)), tenant=tenant_of(request))
    answer = await service.lookup(ask)
    if answer is None:
        return Response(LookupResult(hit=False, answer=None), headers={"X-Sentinel-Cache": "MISS"})
    return Response(LookupResult(hit=True, answer=answer), headers=cache_headers(answer))


@post("/v1/cache/store", status_code=201, responses=ERROR_RESPONSES)
async def cache_store(
    request: Request[Any, Any, Any],
    data: JSONBody[CacheStoreRequest],
    service: NamedDependency[QueryService],
) -> Answer:
    """Store an answer the app got itself; later requests for the same question hit it."""
    ask = msgspec.structs.replace(data.to_ask(dict(request.headers)), tenant=tenant_of(request))
    if data.ttl is not None:
        ask = msgspec.structs.replace(ask, ttl=data.ttl)
    return await service.put(ask, data.result())
