"""OpenAI-compatible chat providers (Groq, OpenAI, Ollama, vLLM...): the Chat Completions wire
format, whole answers and streamed chunks, over the shared provider HTTP plumbing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import aiohttp
import msgspec

from app.errors import UpstreamBadResponse, UpstreamError, UpstreamNotConfigured
from app.providers.http import ErrorDetail, ProviderHttp, Redactor, clean_message
from app.providers.upstreams.base import ChatDelta, ChatMessage, ChatRequest, ChatResult
from app.providers.upstreams.tokens import count_or_estimate, prompt_texts

# -- wire types (OpenAI Chat Completions) ------------------------------------------------------


class _Function(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    arguments: str = ""


class _ToolCall(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    type: str = "function"
    function: _Function


class _ReplyMessage(msgspec.Struct, frozen=True, kw_only=True):
    # Null when the provider refuses or calls a tool; treated like an empty answer.
    content: str | None = None
    tool_calls: list[_ToolCall] | None = None


class _Choice(msgspec.Struct, frozen=True, kw_only=True):
    message: _ReplyMessage
    finish_reason: str | None = None


class _Usage(msgspec.Struct, frozen=True, kw_only=True):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class _ChatResponse(msgspec.Struct, frozen=True, kw_only=True):
    choices: list[_Choice]
    model: str | None = None
    usage: _Usage | None = None


class _FunctionDelta(msgspec.Struct, frozen=True, kw_only=True):
    name: str | None = None
    arguments: str | None = None


class _ToolCallDelta(msgspec.Struct, frozen=True, kw_only=True):
    index: int = 0
    id: str | None = None
    type: str | None = None
    function: _FunctionDelta | None = None


class _DeltaMessage(msgspec.Struct, frozen=True, kw_only=True):
    role: str | None = None
    content: str | None = None
    tool_calls: list[_ToolCallDelta] | None = None


class _ChunkChoice(msgspec.Struct, frozen=True, kw_only=True):
    delta: _DeltaMessage = _DeltaMessage()
    finish_reason: str | None = None


class _Chunk(msgspec.Struct, frozen=True, kw_only=True):
    choices: list[_ChunkChoice] = msgspec.field(default_factory=list)
    model: str | None = None
    usage: _Usage | None = None
    # Some servers report a failure inside the stream instead of an HTTP status.
    error: ErrorDetail | str | None = None


# Module-level so every call reuses the compiled encoders/decoders.
_ENCODER = msgspec.json.Encoder()
_RESPONSE_DECODER = msgspec.json.Decoder(_ChatResponse)
_CHUNK_DECODER = msgspec.json.Decoder(_Chunk)


# -- the provider ------------------------------------------------------------------------------


class OpenAICompatProvider:
    """Answers through an OpenAI-compatible `/chat/completions` endpoint, whole or streamed.

    Groq, OpenAI and self-hosted servers are all this class, each with its own name, key,
    base URL and default model (see `build_router`).
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        name: str,
        api_key: str | None,
        base_url: str | None,
        model: str,
        timeout: float,
        idle_timeout: float | None = None,
        requires_key: bool = True,
        not_configured: str | None = None,
    ) -> None:
        self._name = name
        self._api_key = api_key or None
        self._base_url = (base_url or "").rstrip("/")
        self._model = model
        # Ollama or vLLM on a private network need no key: a base URL is their whole setup.
        self._configured = bool(self._base_url) and (self._api_key is not None or not requires_key)
        self._not_configured = not_configured or (
            f"the {name} provider is not configured: set {name.upper()}_API_KEY"
        )
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        self._http = ProviderHttp(
            session,
            name=name,
            url=self._base_url + "/chat/completions",
            headers=headers,
            timeout=timeout,
            idle_timeout=idle_timeout,
        )

    @property
    def name(self) -> str:
        """Provider name for model ids, health and logs."""
        return self._name

    @property
    def configured(self) -> bool:
        """Whether it can be called (a key, or for a keyless server a base URL, is set)."""
        return self._configured

    @property
    def default_model(self) -> str:
        """The model used when a request names none."""
        return self._model

    def __repr__(self) -> str:
        # Spelled out so the key can never reach a log through a default repr.
        return (
            f"{type(self).__name__}(url={self._http.url!r}, model={self._model!r}, "
            f"configured={self.configured})"
        )

    async def chat(self, request: ChatRequest) -> ChatResult:
        """The whole answer, or an UpstreamError subclass after bounded retries."""
        self._require_configured()
        request = self._with_model(request)
        redact = Redactor.for_request(self._api_key, request)
        body = await self._http.post(_ENCODER.encode(request), redact)
        return self._parse_chat(body, request)

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatDelta]:
        """The answer as deltas; retried only until the stream's first bytes."""
        self._require_configured()
        request = self._with_model(request)
        redact = Redactor.for_request(self._api_key, request)
        wire = msgspec.to_builtins(request)
        wire["stream"] = True
        wire["stream_options"] = {"include_usage": True}
        stream = await self._http.open_stream(_ENCODER.encode(wire), redact)
        async with aclosing(stream.deltas(_ChunkReader(self._name, redact), request)) as deltas:
            async for delta in deltas:
                yield delta

    def _require_configured(self) -> None:
        if not self._configured:
            raise UpstreamNotConfigured(self._not_configured)

    def _with_model(self, request: ChatRequest) -> ChatRequest:
        return request if request.model else msgspec.structs.replace(request, model=self._model)

    def _parse_chat(self, body: bytes, request: ChatRequest) -> ChatResult:
        """Read a 2xx body into a ChatResult, or raise UpstreamBadResponse.

        Not retried: the provider already billed this generation, and a 2xx garbage or empty
        body (a wrong base URL, a proxy's HTML page, a content filter, max_tokens too small
        to say anything) comes back the same next time. A body cut short in transit is a
        ClientPayloadError instead, and that one is retried.
        """
        try:
            reply = _RESPONSE_DECODER.decode(body)
        except msgspec.DecodeError as exc:
            # msgspec's message names the JSON path, never the body, so it is safe to show.
            raise UpstreamBadResponse(f"{self._name} returned an unreadable body: {exc}") from None
        if not reply.choices:
            raise UpstreamBadResponse(f"{self._name} returned no choices")
        choice = reply.choices[0]
        text = choice.message.content
        calls = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.function.name, "arguments": call.function.arguments},
            }
            for call in choice.message.tool_calls or ()
        ]
        if not calls and (text is None or not text.strip()):
            raise UpstreamBadResponse(f"{self._name} returned an empty answer")
        if calls and text is not None and not text.strip():
            text = None
        usage = reply.usage or _Usage()
        completion_texts = [
            text,
            *(call.function.arguments for call in choice.message.tool_calls or ()),
        ]
        return ChatResult(
            message=ChatMessage(role="assistant", content=text, tool_calls=calls or None),
            finish_reason=choice.finish_reason or ("tool_calls" if calls else "stop"),
            model=reply.model or request.model,
            # Some OpenAI-compatible servers omit usage; ~4 chars per token keeps the accounting
            # in the right order of magnitude rather than reporting zero.
            prompt_tokens=count_or_estimate(usage.prompt_tokens, *prompt_texts(request)),
            completion_tokens=count_or_estimate(usage.completion_tokens, *completion_texts),
            provider=self._name,
        )


class _ChunkReader:
    """OpenAI's stream chunks in, deltas out; `data: [DONE]` is the proper end."""

    end = "[DONE]"

    def __init__(self, name: str, redact: Redactor) -> None:
        self._name = name
        self._redact = redact
        self._done = False

    def finished(self) -> bool:
        """Whether `[DONE]` has arrived."""
        return self._done

    def translate(self, data: str) -> ChatDelta | None:
        """One `data:` payload as a delta (None if it says nothing), or an UpstreamError."""
        if data.strip() == "[DONE]":
            self._done = True
            return None
        try:
            chunk = _CHUNK_DECODER.decode(data)
        except msgspec.DecodeError as exc:
            raise UpstreamBadResponse(
                f"{self._name} sent an unreadable stream chunk: {exc}"
            ) from None
        if chunk.error is not None:
            error = chunk.error
            message = error if isinstance(error, str) else error.message or error.type or "error"
            raise UpstreamError(
                f"{self._name} failed mid-stream: {clean_message(message, self._redact)}"
            )
        usage = None
        if chunk.usage is not None and chunk.usage.prompt_tokens is not None:
            usage = (chunk.usage.prompt_tokens, chunk.usage.completion_tokens or 0)
        choice = chunk.choices[0] if chunk.choices else _ChunkChoice()
        delta = ChatDelta(
            content=choice.delta.content or None,
            tool_calls=[_tool_call_delta(call) for call in choice.delta.tool_calls]
            if choice.delta.tool_calls
            else None,
            role=choice.delta.role,
            finish_reason=choice.finish_reason,
            usage=usage,
            model=chunk.model,
        )
        # A chunk with nothing but ids (e.g. an empty content string) is not worth relaying.
        return None if delta == ChatDelta(model=delta.model) else delta


def _tool_call_delta(call: _ToolCallDelta) -> dict[str, Any]:
    """OpenAI's delta shape with the absent keys left out."""
    out: dict[str, Any] = {"index": call.index}
    if call.id is not None:
        out["id"] = call.id
    if call.type is not None or call.id is not None:
        out["type"] = call.type or "function"
    if call.function is not None:
        function: dict[str, str] = {}
        if call.function.name is not None:
            function["name"] = call.function.name
        function["arguments"] = call.function.arguments or ""
        out["function"] = function
    return out
