"""The HTTP plumbing every chat provider shares: one POST with bounded retries, error mapping
and redaction, and the open event stream with stall and cut detection."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TypeVar

import aiohttp
import msgspec

from app.errors import (
    UpstreamError,
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
from app.providers.sse import EventReader, SSEDecoder, SSEEvent, StreamTally
from app.providers.upstreams.base import ChatDelta, ChatRequest

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_ATTEMPTS = 3
# Long enough to say what went wrong, short enough not to flood logs or error bodies.
MAX_DETAIL_CHARS = 300
# The connect phase should never eat the whole deadline: a dead host fails fast and is retried.
MAX_CONNECT_SECONDS = 5.0
MIN_REDACTED_CHARS = 4


class ErrorDetail(msgspec.Struct, frozen=True, kw_only=True):
    """The `error` object of OpenAI's and Anthropic's error bodies and stream error events."""

    message: str | None = None
    type: str | None = None


class _ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    # OpenAI's and Anthropic's shape; some compatible servers send a bare string instead.
    error: ErrorDetail | str | None = None


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


# -- redaction --------------------------------------------------------------------------------


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


# -- the endpoint and its streams -------------------------------------------------------------


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

    async def deltas(
        self, reader: EventReader, request: ChatRequest
    ) -> AsyncGenerator[ChatDelta, None]:
        """The stream as deltas, `reader` translating each event, until its proper end.

        Only a proper end with a finish_reason and an answer ends it normally, with usage
        estimated if the provider sent none. The connection goes back to the pool only then;
        any other exit drops it.
        """
        tally = StreamTally(self._name, request)
        try:
            while not reader.finished() and (events := await self.next_events()) is not None:
                for event in events:
                    delta = reader.translate(event.data)
                    if delta is not None:
                        yield tally.note(delta)
                    if reader.finished():
                        break
            if not reader.finished():
                raise UpstreamUnavailable(f"{self._name} ended the stream before {reader.end}")
            last = tally.ending()
            if last is not None:
                yield last
            self.release()
        finally:
            self.close()

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
        error = UpstreamError(message) if status in (401, 403, 407) else UpstreamRejected(message)
        error.upstream_status = str(status)
        return error


# -- errors -----------------------------------------------------------------------------------


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
        error: UpstreamError = UpstreamUnavailable(last.reason + suffix)
    else:
        error = UpstreamError(last.reason + suffix)
    if isinstance(last, _ServerFailed):
        error.upstream_status = str(last.status)
    return error
