"""Groq (or any OpenAI-compatible API) as the upstream that answers cache misses."""

from __future__ import annotations

import logging
import math
import time

import aiohttp
import msgspec

from app.errors import (
    UpstreamBadResponse,
    UpstreamError,
    UpstreamNotConfigured,
    UpstreamRateLimited,
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
from app.providers.upstreams.base import Completion

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
# Long enough to say what went wrong, short enough not to flood logs or error bodies.
MAX_DETAIL_CHARS = 300
# The connect phase should never eat the whole deadline: a dead host fails fast and is retried.
MAX_CONNECT_SECONDS = 5.0
# Rough chars-per-token for English with BPE tokenizers; only used when `usage` is missing.
CHARS_PER_TOKEN = 4

NOT_CONFIGURED = (
    "No upstream LLM is configured, so a cache miss cannot be answered: set GROQ_API_KEY "
    "(and optionally GROQ_BASE_URL and GROQ_MODEL to use any OpenAI-compatible API)"
)


class _Message(msgspec.Struct, frozen=True, kw_only=True):
    role: str
    content: str


class _ChatRequest(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    model: str
    messages: list[_Message]
    max_tokens: int | None = None
    temperature: float | None = None


class _ReplyMessage(msgspec.Struct, frozen=True, kw_only=True):
    # Null when the provider refuses or calls a tool; treated like an empty answer.
    content: str | None = None


class _Choice(msgspec.Struct, frozen=True, kw_only=True):
    message: _ReplyMessage


class _Usage(msgspec.Struct, frozen=True, kw_only=True):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class _ChatResponse(msgspec.Struct, frozen=True, kw_only=True):
    choices: list[_Choice]
    model: str | None = None
    usage: _Usage | None = None


class _ErrorDetail(msgspec.Struct, frozen=True, kw_only=True):
    message: str | None = None


class _ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    # OpenAI's shape; some compatible servers send a bare string instead of an object.
    error: _ErrorDetail | str | None = None


# Module-level so every call reuses the compiled encoders/decoders.
_ENCODER = msgspec.json.Encoder()
_RESPONSE_DECODER = msgspec.json.Decoder(_ChatResponse)
_ERROR_DECODER = msgspec.json.Decoder(_ErrorBody)


class _RateLimited(Retryable):
    """HTTP 429; remembers the provider's Retry-After for the final error."""


class _ServerFailed(Retryable):
    """HTTP 5xx."""

    def __init__(self, reason: str, *, status: int, retry_after: float | None) -> None:
        super().__init__(reason, retry_after=retry_after)
        self.status = status


class _ConnectionFailed(Retryable):
    """The request never got an HTTP answer (refused, reset, truncated body)."""


class _ConnectTimedOut(Retryable):
    """The TCP/TLS connect took longer than its own short timeout."""


class GroqUpstream:
    """Completes prompts through an OpenAI-compatible `/chat/completions` endpoint."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        api_key: str | None,
        base_url: str,
        model: str,
        timeout: float,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        # The session belongs to the app (one pool for every provider); we never close it.
        self._session = session
        self._api_key = api_key or None
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._model = model
        self._timeout = timeout
        self._headers = {"Accept": "application/json", "Content-Type": "application/json"}
        if self._api_key:
            self._headers["Authorization"] = f"Bearer {self._api_key}"

    @property
    def name(self) -> str:
        """Provider name for health and logs."""
        return "groq"

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
            f"GroqUpstream(url={self._url!r}, model={self._model!r}, configured={self.configured})"
        )

    async def complete(
        self,
        prompt: str,
        *,
        model: str,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> Completion:
        """Complete the prompt or raise an UpstreamError subclass."""
        if self._api_key is None:
            raise UpstreamNotConfigured(NOT_CONFIGURED)
        model = model or self._model
        payload = _ENCODER.encode(
            _ChatRequest(
                model=model,
                messages=[_Message(role="user", content=prompt)],
                max_tokens=max_tokens,
                temperature=temperature,
            )
        )
        redact = _Redactor(self._api_key, prompt)

        async def attempt(remaining: float) -> Completion:
            return await self._attempt(payload, remaining, prompt, model, redact)

        try:
            return await with_retries(
                attempt, deadline=time.monotonic() + self._timeout, max_attempts=MAX_ATTEMPTS
            )
        except (DeadlineExceeded, TimeoutError):
            raise UpstreamTimeout(f"groq did not answer within {self._timeout:g}s") from None
        except RetriesExhausted as exc:
            raise _exhausted_error(exc) from None

    async def _attempt(
        self, payload: bytes, remaining: float, prompt: str, model: str, redact: _Redactor
    ) -> Completion:
        """One HTTP round trip: a Completion, a Retryable, or a final UpstreamError."""
        timeout = aiohttp.ClientTimeout(
            total=remaining, sock_connect=min(MAX_CONNECT_SECONDS, remaining)
        )
        try:
            async with self._session.post(
                self._url, data=payload, headers=self._headers, timeout=timeout
            ) as response:
                status = response.status
                retry_after_header = response.headers.get("Retry-After")
                body = await response.read()
        # ServerTimeoutError is both a ClientConnectionError and a TimeoutError, so it goes first.
        except aiohttp.ServerTimeoutError as exc:
            raise _retry(
                _ConnectTimedOut(f"groq connect timed out ({type(exc).__name__})")
            ) from exc
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise _retry(
                _ConnectionFailed(f"groq unreachable: {redact(str(exc) or type(exc).__name__)}")
            ) from exc
        except aiohttp.ClientError as exc:
            # Invalid URL, oversized headers...: a configuration or protocol problem, not flakiness.
            raise UpstreamError(f"groq request failed: {type(exc).__name__}") from None

        if 200 <= status < 300:
            return _parse_completion(body, prompt, model)
        retry_after = parse_retry_after(retry_after_header)
        detail = _error_detail(body, redact)
        if status == 429:
            raise _retry(
                _RateLimited(f"groq rate limited (HTTP 429){detail}", retry_after=retry_after)
            )
        if status >= 500:
            raise _retry(
                _ServerFailed(
                    f"groq returned HTTP {status}{detail}", status=status, retry_after=retry_after
                )
            )
        # 400/401/403/404/422...: the same request will fail the same way, so no retry.
        raise UpstreamError(f"groq rejected the request with HTTP {status}{detail}")


class _Redactor:
    """Removes the API key and the prompt from text that came back from the provider."""

    def __init__(self, api_key: str, prompt: str) -> None:
        # Longest first so a prompt that contains the key cannot leave part of it behind.
        self._secrets = sorted({s for s in (api_key, prompt.strip()) if s}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return text


def _retry(exc: Retryable) -> Retryable:
    """Log a retryable failure (status only, never the prompt) and hand it back to raise."""
    log.info("upstream attempt failed: %s", exc.reason)
    return exc


def _error_detail(body: bytes, redact: _Redactor) -> str:
    """`: <provider error.message>` redacted, on one line, truncated; empty if not OpenAI JSON."""
    try:
        error = _ERROR_DECODER.decode(body).error
    except msgspec.DecodeError:
        return ""
    message = error if isinstance(error, str) else error.message if error else None
    if not message:
        return ""
    # Redact before truncating: a cut could otherwise leave a prefix of the key behind.
    message = " ".join(redact(message).split())
    if len(message) > MAX_DETAIL_CHARS:
        message = message[: MAX_DETAIL_CHARS - 1] + "…"
    return f": {message}"


def _parse_completion(body: bytes, prompt: str, requested_model: str) -> Completion:
    """Read a 2xx body into a Completion, or raise UpstreamBadResponse.

    Not retried: the provider already billed this generation, and a 2xx garbage or empty
    body (wrong GROQ_BASE_URL, a proxy's HTML page, a content filter, max_tokens too small
    to say anything) comes back the same next time. A body cut short in transit is a
    ClientPayloadError instead, and that one is retried.
    """
    try:
        reply = _RESPONSE_DECODER.decode(body)
    except msgspec.DecodeError as exc:
        # msgspec's message names the JSON path, never the body, so it is safe to show.
        raise UpstreamBadResponse(f"groq returned an unreadable body: {exc}") from None
    if not reply.choices:
        raise UpstreamBadResponse("groq returned no choices")
    text = reply.choices[0].message.content
    if text is None or not text.strip():
        raise UpstreamBadResponse("groq returned an empty answer")
    usage = reply.usage or _Usage()
    return Completion(
        text=text,
        model=reply.model or requested_model,
        # Some OpenAI-compatible servers omit usage; ~4 chars per token keeps the accounting
        # in the right order of magnitude rather than reporting zero.
        prompt_tokens=_or_estimate(usage.prompt_tokens, prompt),
        completion_tokens=_or_estimate(usage.completion_tokens, text),
    )


def _or_estimate(tokens: int | None, text: str) -> int:
    """The provider's count, or an estimate of ceil(len(text) / 4)."""
    return tokens if tokens is not None else math.ceil(len(text) / CHARS_PER_TOKEN)


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
    if isinstance(last, _ConnectionFailed):
        return UpstreamUnavailable(last.reason + suffix)
    return UpstreamError(last.reason + suffix)
