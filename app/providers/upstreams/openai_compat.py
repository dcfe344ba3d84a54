"""OpenAI-compatible chat providers (Groq, OpenAI, Ollama, vLLM...) and the HTTP plumbing
every chat provider shares: one POST with bounded retries, error mapping, SSE streams."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

import aiohttp
import msgspec

from app.errors import (
    UpstreamBadResponse,
    UpstreamError,
    UpstreamNotConfigured,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from app.providers.retry import (
    DeadlineExceeded,
    RetriesExhausted,
    Retryable,
    parse_retry_after,
    with_retries,
)
from app.providers.upstreams.base import (
    ChatDelta,
    ChatMessage,
    ChatRequest,
    ChatResult,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_ATTEMPTS = 3
# Long enough to say what went wrong, short enough not to flood logs or error bodies.
MAX_DETAIL_CHARS = 300
# The connect phase should never eat the whole deadline: a dead host fails fast and is retried.
MAX_CONNECT_SECONDS = 5.0
# Rough chars-per-token for English with BPE tokenizers; only used when `usage` is missing.
CHARS_PER_TOKEN = 4
MIN_REDACTED_CHARS = 4
# No chat chunk comes near this; a longer unterminated line is a server streaming garbage.
MAX_SSE_LINE_BYTES = 4 * 1024 * 1024


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


class _ErrorDetail(msgspec.Struct, frozen=True, kw_only=True):
    message: str | None = None
    type: str | None = None


class _Chunk(msgspec.Struct, frozen=True, kw_only=True):
    choices: list[_ChunkChoice] = msgspec.field(default_factory=list)
    model: str | None = None
    usage: _Usage | None = None
    # Some servers report a failure inside the stream instead of an HTTP status.
    error: _ErrorDetail | str | None = None


class _ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    # OpenAI's and Anthropic's shape; some compatible servers send a bare string instead.
    error: _ErrorDetail | str | None = None


# Module-level so every call reuses the compiled encoders/decoders.
_ENCODER = msgspec.json.Encoder()
_RESPONSE_DECODER = msgspec.json.Decoder(_ChatResponse)
_CHUNK_DECODER = msgspec.json.Decoder(_Chunk)
_ERROR_DECODER = msgspec.json.Decoder(_ErrorBody)


# -- failures worth another attempt -----------------------------------------------------------


class _RateLimited(Retryable):
    """HTTP 429; remembers the provider's Retry-After for the final error."""


class _ServerFailed(Retryable):
    """HTTP 5xx (529 is Anthropic's "overloaded")."""

    def __init__(self, reason: str, *, status: int, retry_after: float | None) -> None:
        super().__init__(reason, retry_after=retry_after)
        self.status = status


class _ConnectionFailed(Retryable):
    """The request never got a usable HTTP answer (refused, reset, truncated body)."""


class _ConnectTimedOut(Retryable):
    """The TCP/TLS connect took longer than its own short timeout."""


# -- shared plumbing (also used by the Anthropic provider) ------------------------------------


class Redactor:
    """Removes the API key and the request's texts from what came back from the provider."""

    def __init__(self, api_key: str | None, *texts: str | None) -> None:
        # Texts shorter than a few characters ("ok", "no") hide nothing worth hiding and would
        # shred every word that contains them.
        secrets = {t.strip() for t in texts if t and len(t.strip()) >= MIN_REDACTED_CHARS}
        if api_key and api_key.strip():
            secrets.add(api_key.strip())
        # Longest first so a text that contains the key cannot leave part of it behind.
        self._secrets = sorted(secrets, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return text

    @classmethod
    def for_request(cls, api_key: str | None, request: ChatRequest) -> Redactor:
        """A redactor for the key and every message of the request."""
        return cls(api_key, *(message.content for message in request.messages))


class SSEEvent(msgspec.Struct, frozen=True):
    """One server-sent event: its `event:` name ("message" if none) and its joined data."""

    event: str
    data: str


class SSEDecoder:
    """Incremental text/event-stream parser: feed it bytes as they come, get whole events.

    Lines end in LF or CRLF (every LLM provider's servers); a line is only decoded once
    complete, so a multi-byte character split across reads is never mangled.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._event = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """The events completed by `chunk`; raises UpstreamBadResponse on an endless line."""
        self._buffer += chunk
        events: list[SSEEvent] = []
        start = 0
        while (end := self._buffer.find(b"\n", start)) >= 0:
            line = self._buffer[start:end]
            if line.endswith(b"\r"):
                line = line[:-1]
            start = end + 1
            event = self._line(line.decode("utf-8", errors="replace"))
            if event is not None:
                events.append(event)
        del self._buffer[:start]
        if len(self._buffer) > MAX_SSE_LINE_BYTES:
            raise UpstreamBadResponse("the event stream sent a line longer than 4 MiB")
        return events

    def _line(self, line: str) -> SSEEvent | None:
        if not line:
            # A blank line dispatches the event being built; without data there is none.
            event = (
                SSEEvent(self._event or "message", "\n".join(self._data)) if self._data else None
            )
            self._event, self._data = "", []
            return event
        if line.startswith(":"):
            return None  # a comment, e.g. a keep-alive
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        return None  # `id` and `retry` mean nothing for a one-shot request


class SSEStream:
    """An open event-stream response: events in order, with stall and cut detection."""

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        first: bytes,
        *,
        name: str,
        idle_timeout: float,
        redact: Redactor,
    ) -> None:
        self._response = response
        self._pending: bytes | None = first
        self._name = name
        self._idle_timeout = idle_timeout
        self._redact = redact
        self._decoder = SSEDecoder()

    async def next_events(self) -> list[SSEEvent] | None:
        """The events from the next read (maybe none), or None once the body has ended."""
        chunk = self._pending
        self._pending = None
        if chunk is None:
            chunk = await self._read()
        if not chunk:
            return None
        return self._decoder.feed(chunk)

    async def _read(self) -> bytes:
        try:
            async with asyncio.timeout(self._idle_timeout):
                return await self._response.content.readany()
        except TimeoutError:
            raise UpstreamTimeout(
                f"{self._name} stream stalled: no data for {self._idle_timeout:g}s"
            ) from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            detail = clean_message(str(exc) or type(exc).__name__, self._redact)
            raise UpstreamUnavailable(f"{self._name} stream was cut: {detail}") from None

    def release(self) -> None:
        """Hand the connection back to the pool (aiohttp drops it unless the body ended)."""
        self._response.release()

    def close(self) -> None:
        """Drop the connection: the only safe end for a body read part-way."""
        self._response.close()


class ProviderHttp:
    """One provider endpoint on the app's shared session: JSON POSTs and SSE streams.

    `timeout` bounds a whole call, retries included (for a stream: until its first body
    bytes); `idle_timeout` bounds each silence inside a stream after that.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        name: str,
        url: str,
        headers: dict[str, str],
        timeout: float,
        idle_timeout: float | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if idle_timeout is not None and idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive")
        # The session belongs to the app (one pool for every provider); we never close it.
        self._session = session
        self.name = name
        self.url = url
        self.timeout = timeout
        self.idle_timeout = idle_timeout or timeout
        self._headers = {"Accept": "application/json", "Content-Type": "application/json"}
        self._headers.update(headers)
        self._stream_headers = {**self._headers, "Accept": "text/event-stream"}

    async def post(self, payload: bytes, redact: Redactor) -> bytes:
        """The 2xx body of a POST, retried on 429, 5xx and connection failures."""

        async def attempt(remaining: float) -> bytes:
            return await self._attempt(payload, remaining, redact)

        return await self._with_retries(attempt)

    async def open_stream(self, payload: bytes, redact: Redactor) -> SSEStream:
        """A POST whose 2xx body is an event stream, retried until its first bytes arrive."""

        async def attempt(remaining: float) -> SSEStream:
            return await self._open_attempt(payload, remaining, redact)

        return await self._with_retries(attempt)

    async def _with_retries(self, attempt: Callable[[float], Awaitable[T]]) -> T:
        try:
            return await with_retries(
                attempt, deadline=time.monotonic() + self.timeout, max_attempts=MAX_ATTEMPTS
            )
        except (DeadlineExceeded, TimeoutError):
            raise UpstreamTimeout(f"{self.name} did not answer within {self.timeout:g}s") from None
        except RetriesExhausted as exc:
            # Chained to the Retryable: that is how the router knows the failure was transient.
            raise _exhausted_error(exc) from exc.last

    async def _attempt(self, payload: bytes, remaining: float, redact: Redactor) -> bytes:
        """One HTTP round trip: a 2xx body, a Retryable, or a final UpstreamError."""
        timeout = aiohttp.ClientTimeout(
            total=remaining, sock_connect=min(MAX_CONNECT_SECONDS, remaining)
        )
        try:
            async with self._session.post(
                self.url, data=payload, headers=self._headers, timeout=timeout
            ) as response:
                status = response.status
                retry_after = response.headers.get("Retry-After")
                body = await response.read()
        except aiohttp.ClientError as exc:
            raise self._transport_error(exc, redact) from exc
        if 200 <= status < 300:
            return body
        raise self._status_error(status, retry_after, body, redact)

    async def _open_attempt(self, payload: bytes, remaining: float, redact: Redactor) -> SSEStream:
        """One stream opening: the response with its first body bytes, or a failure."""
        # No total: a long answer may stream for minutes; silences are bounded per read.
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=min(MAX_CONNECT_SECONDS, remaining)
        )
        try:
            response = await self._session.post(
                self.url, data=payload, headers=self._stream_headers, timeout=timeout
            )
        except aiohttp.ClientError as exc:
            raise self._transport_error(exc, redact) from exc
        try:
            if not 200 <= response.status < 300:
                body = await response.read()
                response.release()
                raise self._status_error(
                    response.status, response.headers.get("Retry-After"), body, redact
                )
            # Nothing has reached the caller yet, so a stream that dies now is still retried.
            first = await response.content.readany()
            if not first:
                raise _retry(_ConnectionFailed(f"{self.name} ended the stream before any data"))
        except aiohttp.ClientError as exc:
            response.close()
            raise self._transport_error(exc, redact) from exc
        except BaseException:
            response.close()
            raise
        return SSEStream(
            response, first, name=self.name, idle_timeout=self.idle_timeout, redact=redact
        )

    def _transport_error(self, exc: aiohttp.ClientError, redact: Redactor) -> Exception:
        """A Retryable for flaky networks, a final UpstreamError for a broken request."""
        # ServerTimeoutError is both a ClientConnectionError and a TimeoutError, so it goes first.
        if isinstance(exc, aiohttp.ServerTimeoutError):
            return _retry(_ConnectTimedOut(f"{self.name} connect timed out ({type(exc).__name__})"))
        if isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError):
            detail = redact(str(exc) or type(exc).__name__)
            return _retry(_ConnectionFailed(f"{self.name} unreachable: {detail}"))
        # Invalid URL, oversized headers...: a configuration or protocol problem, not flakiness.
        return UpstreamError(f"{self.name} request failed: {type(exc).__name__}")

    def _status_error(
        self, status: int, retry_after_header: str | None, body: bytes, redact: Redactor
    ) -> Exception:
        """The Retryable or final UpstreamError for a non-2xx answer."""
        retry_after = parse_retry_after(retry_after_header)
        detail = error_detail(body, redact)
        if status == 429:
            return _retry(
                _RateLimited(
                    f"{self.name} rate limited (HTTP 429){detail}", retry_after=retry_after
                )
            )
        if status >= 500:
            what = "is overloaded" if status == 529 else "returned"
            return _retry(
                _ServerFailed(
                    f"{self.name} {what} HTTP {status}{detail}",
                    status=status,
                    retry_after=retry_after,
                )
            )
        # 4xx: the same request will fail the same way, so no retry. 401/403 mean our key or
        # account is wrong (a 502: not the client's doing); the rest are about the request.
        message = f"{self.name} rejected the request with HTTP {status}{detail}"
        if status in (401, 403, 407):
            return UpstreamError(message)
        return UpstreamRejected(message)


def _retry(exc: Retryable) -> Retryable:
    """Log a retryable failure (status only, never the prompt) and hand it back to raise."""
    log.info("upstream attempt failed: %s", exc.reason)
    return exc


def error_detail(body: bytes, redact: Redactor) -> str:
    """`: <provider error.message>` redacted, on one line, truncated; empty if not JSON."""
    try:
        error = _ERROR_DECODER.decode(body).error
    except msgspec.DecodeError:
        return ""
    message = error if isinstance(error, str) else error.message if error else None
    return f": {clean_message(message, redact)}" if message else ""


def clean_message(message: str, redact: Redactor) -> str:
    """A provider's message redacted, on one line, truncated."""
    # Redact before truncating: a cut could otherwise leave a prefix of the key behind.
    message = " ".join(redact(message).split())
    if len(message) > MAX_DETAIL_CHARS:
        message = message[: MAX_DETAIL_CHARS - 1] + "…"
    return message


def _exhausted_error(exc: RetriesExhausted) -> UpstreamError:
    """Map the last retryable failure to the error the client sees."""
    last = exc.last
    suffix = f" after {exc.attempts} attempt{'s' if exc.attempts != 1 else ''}"
    if isinstance(last, _RateLimited):
        headers: dict[str, str] = {}
        if last.retry_after is not None:
            # Whole seconds: the provider may have sent an HTTP date or a fraction.
            headers["Retry-After"] = str(math.ceil(last.retry_after))
        return UpstreamRateLimited(last.reason + suffix, headers=headers)
    if isinstance(last, _ConnectTimedOut):
        return UpstreamTimeout(last.reason + suffix)
    if isinstance(last, _ConnectionFailed) or (
        isinstance(last, _ServerFailed) and last.status == 529
    ):
        return UpstreamUnavailable(last.reason + suffix)
    return UpstreamError(last.reason + suffix)


def estimate_tokens(*texts: str | None) -> int:
    """ceil(characters / 4): the token count when a provider reports none."""
    return math.ceil(sum(len(text) for text in texts if text) / CHARS_PER_TOKEN)


def prompt_texts(request: ChatRequest) -> Iterable[str | None]:
    """Every text the model reads, for estimating prompt tokens."""
    for message in request.messages:
        yield message.content
        for call in message.tool_calls or ():
            function = call.get("function")
            if isinstance(function, dict):
                yield str(function.get("arguments") or "")


class StreamTally:
    """What a provider's stream has said so far: enough to check its end and fill in usage."""

    def __init__(self, name: str, request: ChatRequest) -> None:
        self._name = name
        self._request = request
        self.texts: list[str] = []
        self.tool_calls = 0
        self.finish_reason: str | None = None
        self.usage: tuple[int, int] | None = None
        self._first = True

    def note(self, delta: ChatDelta) -> ChatDelta:
        """Record a delta on its way out; the first one names the provider."""
        if delta.content:
            self.texts.append(delta.content)
        if delta.tool_calls:
            self.tool_calls += len(delta.tool_calls)
        if delta.finish_reason:
            self.finish_reason = delta.finish_reason
        if delta.usage:
            self.usage = delta.usage
        if self._first:
            self._first = False
            return msgspec.structs.replace(delta, provider=self._name)
        return delta

    def ending(self) -> ChatDelta | None:
        """Check a stream that ended properly; a last delta with estimated usage if it had none."""
        if self.finish_reason is None:
            raise UpstreamBadResponse(f"{self._name} ended the stream without a finish_reason")
        if not self.tool_calls and not "".join(self.texts).strip():
            raise UpstreamBadResponse(f"{self._name} returned an empty answer")
        if self.usage is not None:
            return None
        return ChatDelta(
            usage=(
                estimate_tokens(*prompt_texts(self._request)),
                estimate_tokens(*self.texts),
            )
        )


# -- the provider ------------------------------------------------------------------------------


class OpenAICompatProvider:
    """Answers through an OpenAI-compatible `/chat/completions` endpoint, whole or streamed."""

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
        tally = StreamTally(self._name, request)
        done = False
        try:
            while not done and (events := await stream.next_events()) is not None:
                for event in events:
                    if event.data.strip() == "[DONE]":
                        done = True
                        break
                    delta = self._parse_chunk(event.data, redact)
                    if delta is not None:
                        yield tally.note(delta)
            if not done:
                raise UpstreamUnavailable(f"{self._name} ended the stream before [DONE]")
            last = tally.ending()
            if last is not None:
                yield last
            stream.release()
        finally:
            stream.close()

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
            prompt_tokens=_or(usage.prompt_tokens, estimate_tokens(*prompt_texts(request))),
            completion_tokens=_or(usage.completion_tokens, estimate_tokens(*completion_texts)),
            provider=self._name,
        )

    def _parse_chunk(self, data: str, redact: Redactor) -> ChatDelta | None:
        """One `data:` payload as a delta (None if it says nothing), or an UpstreamError."""
        try:
            chunk = _CHUNK_DECODER.decode(data)
        except msgspec.DecodeError as exc:
            raise UpstreamBadResponse(
                f"{self._name} sent an unreadable stream chunk: {exc}"
            ) from None
        if chunk.error is not None:
            error = chunk.error
            message = error if isinstance(error, str) else error.message or error.type or "error"
            raise UpstreamError(f"{self._name} failed mid-stream: {clean_message(message, redact)}")
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


def _or(tokens: int | None, estimate: int) -> int:
    """The provider's count, or the estimate."""
    return tokens if tokens is not None else estimate
