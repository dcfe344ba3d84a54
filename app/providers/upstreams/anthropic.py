"""Anthropic's Messages API as a chat provider, translated to and from OpenAI's shape."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import aiohttp
import msgspec

from app.errors import (
    BadRequest,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamNotConfigured,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from app.providers.http import ErrorDetail, ProviderHttp, Redactor, clean_message
from app.providers.upstreams.base import ChatDelta, ChatMessage, ChatRequest, ChatResult
from app.providers.upstreams.tokens import count_or_estimate, prompt_texts

API_VERSION = "2023-06-01"
# Anthropic requires max_tokens; OpenAI clients usually leave it out.
DEFAULT_MAX_TOKENS = 1024
NOT_CONFIGURED = "the anthropic provider is not configured: set ANTHROPIC_API_KEY"

_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# Error `type`s sent inside a stream, which has already answered 200.
_STREAM_ERRORS: dict[str, type[UpstreamError]] = {
    "overloaded_error": UpstreamUnavailable,
    "rate_limit_error": UpstreamRateLimited,
}


# -- wire types (Anthropic Messages) -----------------------------------------------------------


class _Usage(msgspec.Struct, frozen=True, kw_only=True):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None

    def prompt_tokens(self) -> int | None:
        """Input tokens, cached ones included, as OpenAI counts them."""
        if self.input_tokens is None:
            return None
        cached = (self.cache_creation_input_tokens or 0) + (self.cache_read_input_tokens or 0)
        return self.input_tokens + cached


class _Block(msgspec.Struct, frozen=True, kw_only=True):
    type: str
    text: str | None = None
    id: str | None = None
    name: str | None = None
    input: Any = None


class _Message(msgspec.Struct, frozen=True, kw_only=True):
    content: list[_Block] = msgspec.field(default_factory=list)
    model: str | None = None
    stop_reason: str | None = None
    usage: _Usage | None = None


class _EventDelta(msgspec.Struct, frozen=True, kw_only=True):
    type: str | None = None
    text: str | None = None
    partial_json: str | None = None
    stop_reason: str | None = None


class _Event(msgspec.Struct, frozen=True, kw_only=True):
    type: str
    index: int | None = None
    message: _Message | None = None
    content_block: _Block | None = None
    delta: _EventDelta | None = None
    usage: _Usage | None = None
    error: ErrorDetail | None = None


_ENCODER = msgspec.json.Encoder()
_MESSAGE_DECODER = msgspec.json.Decoder(_Message)
_EVENT_DECODER = msgspec.json.Decoder(_Event)


class AnthropicProvider:
    """Answers through Anthropic's `POST /v1/messages`, whole or streamed."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        api_key: str | None,
        base_url: str,
        model: str,
        timeout: float,
        idle_timeout: float | None = None,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
    ) -> None:
        self._api_key = api_key or None
        self._model = model
        self._default_max_tokens = default_max_tokens
        headers = {"anthropic-version": API_VERSION}
        if self._api_key:
            headers["x-api-key"] = self._api_key
        self._http = ProviderHttp(
            session,
            name="anthropic",
            url=base_url.rstrip("/") + "/v1/messages",
            headers=headers,
            timeout=timeout,
            idle_timeout=idle_timeout,
        )

    @property
    def name(self) -> str:
        """Provider name for model ids, health and logs."""
        return "anthropic"

    @property
    def configured(self) -> bool:
        """Whether an API key is set."""
        return self._api_key is not None

    @property
    def default_model(self) -> str:
        """The model used when a request names none."""
        return self._model

    def __repr__(self) -> str:
        # Spelled out so the key can never reach a log through a default repr.
        return (
            f"AnthropicProvider(url={self._http.url!r}, model={self._model!r}, "
            f"configured={self.configured})"
        )

    async def chat(self, request: ChatRequest) -> ChatResult:
        """The whole answer, or an UpstreamError subclass after bounded retries."""
        request, payload = self._prepare(request, stream=False)
        body = await self._http.post(payload, Redactor.for_request(self._api_key, request))
        try:
            reply = _MESSAGE_DECODER.decode(body)
        except msgspec.DecodeError as exc:
            raise UpstreamBadResponse(f"anthropic returned an unreadable body: {exc}") from None
        text = "".join(block.text or "" for block in reply.content if block.type == "text")
        calls = [_tool_call(block) for block in reply.content if block.type == "tool_use"]
        if not calls and not text.strip():
            raise UpstreamBadResponse("anthropic returned an empty answer")
        usage = reply.usage or _Usage()
        return ChatResult(
            message=ChatMessage(
                role="assistant", content=text if text.strip() else None, tool_calls=calls or None
            ),
            finish_reason=_finish_reason(reply.stop_reason, calls=bool(calls)),
            model=reply.model or request.model,
            prompt_tokens=count_or_estimate(usage.prompt_tokens(), *prompt_texts(request)),
            completion_tokens=count_or_estimate(
                usage.output_tokens, text, *(c["function"]["arguments"] for c in calls)
            ),
            provider=self.name,
        )

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatDelta]:
        """The answer as OpenAI-style deltas; retried only until the stream's first bytes."""
        request, payload = self._prepare(request, stream=True)
        redact = Redactor.for_request(self._api_key, request)
        stream = await self._http.open_stream(payload, redact)
        async with aclosing(stream.deltas(_StreamTranslator(redact), request)) as deltas:
            async for delta in deltas:
                yield delta

    def _prepare(self, request: ChatRequest, *, stream: bool) -> tuple[ChatRequest, bytes]:
        """The request with its model filled in, and the Messages API body for it."""
        if self._api_key is None:
            raise UpstreamNotConfigured(NOT_CONFIGURED)
        if not request.model:
            request = msgspec.structs.replace(request, model=self._model)
        body = to_messages_request(request, default_max_tokens=self._default_max_tokens)
        if stream:
            body["stream"] = True
        return request, _ENCODER.encode(body)


class _StreamTranslator:
    """Anthropic's stream events in, OpenAI-style deltas out; `message_stop` is the proper end."""

    end = "message_stop"

    def __init__(self, redact: Redactor) -> None:
        self._redact = redact
        self._prompt_tokens: int | None = None
        # Content block index -> OpenAI tool call index (which counts tool calls only).
        self._tool_index: dict[int, int] = {}
        self._stopped = False

    def finished(self) -> bool:
        """Whether `message_stop`, the stream's proper end, has arrived."""
        return self._stopped

    def translate(self, data: str) -> ChatDelta | None:
        """One event's data as a delta (None if it says nothing), or an UpstreamError."""
        try:
            event = _EVENT_DECODER.decode(data)
        except msgspec.DecodeError as exc:
            raise UpstreamBadResponse(f"anthropic sent an unreadable stream event: {exc}") from None
        kind = event.type
        if kind == "message_start" and event.message is not None:
            usage = event.message.usage
            self._prompt_tokens = usage.prompt_tokens() if usage else None
            return ChatDelta(role="assistant", model=event.message.model)
        if kind == "content_block_start" and event.content_block is not None:
            return self._block_start(event.index or 0, event.content_block)
        if kind == "content_block_delta" and event.delta is not None:
            return self._block_delta(event.index or 0, event.delta)
        if kind == "message_delta":
            usage = event.usage or _Usage()
            prompt_tokens = usage.prompt_tokens()
            if prompt_tokens is None:
                prompt_tokens = self._prompt_tokens
            stop_reason = event.delta.stop_reason if event.delta else None
            return ChatDelta(
                finish_reason=_finish_reason(stop_reason, calls=bool(self._tool_index)),
                # Both counts or neither: the caller estimates what the provider left out.
                usage=(prompt_tokens, usage.output_tokens)
                if prompt_tokens is not None and usage.output_tokens is not None
                else None,
            )
        if kind == "message_stop":
            self._stopped = True
            return None
        if kind == "error":
            error = event.error or ErrorDetail()
            message = clean_message(error.message or error.type or "error", self._redact)
            error_class = _STREAM_ERRORS.get(error.type or "", UpstreamError)
            raise error_class(f"anthropic failed mid-stream ({error.type}): {message}")
        # ping, content_block_stop, and event types added after this was written.
        return None

    def _block_start(self, index: int, block: _Block) -> ChatDelta | None:
        if block.type == "text" and block.text:
            return ChatDelta(content=block.text)
        if block.type == "tool_use":
            tool_index = self._tool_index[index] = len(self._tool_index)
            return ChatDelta(
                tool_calls=[
                    {
                        "index": tool_index,
                        "id": block.id or f"call_{index}",
                        "type": "function",
                        "function": {"name": block.name or "", "arguments": ""},
                    }
                ]
            )
        return None  # thinking blocks and the like have no OpenAI counterpart

    def _block_delta(self, index: int, delta: _EventDelta) -> ChatDelta | None:
        if delta.type == "text_delta" and delta.text:
            return ChatDelta(content=delta.text)
        if delta.type == "input_json_delta" and delta.partial_json and index in self._tool_index:
            return ChatDelta(
                tool_calls=[
                    {
                        "index": self._tool_index[index],
                        "function": {"arguments": delta.partial_json},
                    }
                ]
            )
        return None


def _finish_reason(stop_reason: str | None, *, calls: bool) -> str:
    if stop_reason is None:
        return "tool_calls" if calls else "stop"
    return _FINISH_REASONS.get(stop_reason, "stop")


def _tool_call(block: _Block) -> dict[str, Any]:
    """A `tool_use` block as an OpenAI tool call (arguments as a JSON string)."""
    return {
        "id": block.id or "",
        "type": "function",
        "function": {
            "name": block.name or "",
            "arguments": _ENCODER.encode(block.input if block.input is not None else {}).decode(),
        },
    }


# -- request translation -----------------------------------------------------------------------


def to_messages_request(request: ChatRequest, *, default_max_tokens: int) -> dict[str, Any]:
    """An OpenAI-shaped request as a Messages API body; BadRequest for what has no equivalent."""
    if request.seed is not None:
        raise BadRequest("`seed` is not supported by the anthropic provider")
    if request.response_format is not None and request.response_format.get("type") != "text":
        raise BadRequest("`response_format` is not supported by the anthropic provider")
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for position, message in enumerate(request.messages):
        if message.role in {"system", "developer"}:
            if message.content:
                system.append(message.content)
            continue
        role, blocks = _to_blocks(message, position)
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            # Tool results (and a user turn after them) form one user turn, results first.
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:
        content = turn["content"]
        if len(content) == 1 and content[0]["type"] == "text":
            turn["content"] = content[0]["text"]
    body: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_tokens if request.max_tokens is not None else default_max_tokens,
        "messages": turns,
    }
    if system:
        body["system"] = "\n\n".join(system)
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.stop:
        body["stop_sequences"] = list(request.stop)
    if request.tools:
        body["tools"] = [_to_tool(tool) for tool in request.tools]
    if request.tool_choice is not None:
        choice = _to_tool_choice(request.tool_choice)
        if request.tools or choice["type"] != "none":
            body["tool_choice"] = choice
    if request.user is not None:
        body["metadata"] = {"user_id": request.user}
    return body


def _to_blocks(message: ChatMessage, position: int) -> tuple[str, list[dict[str, Any]]]:
    """The Anthropic role and content blocks for one non-system message."""
    if message.role == "user":
        return "user", [{"type": "text", "text": message.content}] if message.content else []
    if message.role == "assistant":
        blocks: list[dict[str, Any]] = []
        if message.content:
            blocks.append({"type": "text", "text": message.content})
        blocks.extend(_to_tool_use(call, position) for call in message.tool_calls or ())
        return "assistant", blocks
    if message.role == "tool":
        if not message.tool_call_id:
            raise BadRequest(f"messages[{position}]: a tool message needs `tool_call_id`")
        result = {
            "type": "tool_result",
            "tool_use_id": message.tool_call_id,
            "content": message.content or "",
        }
        return "user", [result]
    raise BadRequest(f"messages[{position}]: unknown role {message.role!r}")


def _to_tool_use(call: dict[str, Any], position: int) -> dict[str, Any]:
    function = call.get("function")
    if not isinstance(function, dict) or not function.get("name") or not call.get("id"):
        raise BadRequest(f"messages[{position}]: a tool call needs `id` and `function.name`")
    try:
        arguments = msgspec.json.decode(function.get("arguments") or "{}")
    except msgspec.DecodeError:
        raise BadRequest(
            f"messages[{position}]: tool call arguments must be a JSON object"
        ) from None
    if not isinstance(arguments, dict):
        raise BadRequest(f"messages[{position}]: tool call arguments must be a JSON object")
    return {"type": "tool_use", "id": call["id"], "name": function["name"], "input": arguments}


def _to_tool(tool: dict[str, Any]) -> dict[str, Any]:
    function = tool.get("function")
    if tool.get("type") != "function" or not isinstance(function, dict) or not function.get("name"):
        raise BadRequest("tools: only `function` tools with a name are supported by anthropic")
    out: dict[str, Any] = {
        "name": function["name"],
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description"):
        out["description"] = function["description"]
    return out


def _to_tool_choice(choice: str | dict[str, Any]) -> dict[str, Any]:
    if choice == "auto":
        return {"type": "auto"}
    if choice == "none":
        return {"type": "none"}
    if choice == "required":
        return {"type": "any"}
    if isinstance(choice, dict) and choice.get("type") == "function":
        function = choice.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            return {"type": "tool", "name": function["name"]}
    raise BadRequest(f"tool_choice {choice!r} is not supported by the anthropic provider")
