"""Sentinel's exception tree; app/api/errors.py maps it to HTTP responses in one place."""

from __future__ import annotations


class SentinelError(Exception):
    """Base of every error Sentinel answers with a JSON body `{"error": {"code", "message"}}`."""

    status_code = 500
    code = "INTERNAL_ERROR"

    def __init__(
        self, message: str, *, headers: dict[str, str] | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        # The request field at fault, when there is one (OpenAI's error shape has `param`).
        self.param = param


class BadRequest(SentinelError):
    """The client sent something we cannot use."""

    status_code = 400
    code = "INVALID_REQUEST"


class EmptyPrompt(BadRequest):
    """The prompt is empty once whitespace is removed."""

    code = "EMPTY_PROMPT"


class PromptTooLarge(SentinelError):
    """The prompt is longer than MAX_PROMPT_CHARS."""

    status_code = 413
    code = "PROMPT_TOO_LARGE"


class UpstreamError(SentinelError):
    """The LLM provider failed; nothing was stored."""

    status_code = 502
    code = "UPSTREAM_ERROR"


class UpstreamRateLimited(UpstreamError):
    """The provider kept answering 429 after our retries."""

    code = "UPSTREAM_RATE_LIMITED"


class UpstreamUnavailable(UpstreamError):
    """The provider could not be reached (connection refused, reset, DNS)."""

    code = "UPSTREAM_UNAVAILABLE"


class UpstreamBadResponse(UpstreamError):
    """The provider answered 2xx with a body we cannot read, or an empty answer."""

    code = "UPSTREAM_BAD_RESPONSE"


class UpstreamTimeout(UpstreamError):
    """The provider did not answer within the deadline."""

    status_code = 504
    code = "UPSTREAM_TIMEOUT"


class UpstreamNotConfigured(UpstreamError):
    """No provider key is set, so a cache miss cannot be answered."""

    status_code = 503
    code = "UPSTREAM_NOT_CONFIGURED"


class EmbeddingError(SentinelError):
    """The embedding provider failed."""

    status_code = 502
    code = "EMBEDDING_ERROR"


class CacheUnavailable(SentinelError):
    """Redis did not answer."""

    status_code = 503
    code = "CACHE_UNAVAILABLE"


class StartupError(Exception):
    """Sentinel cannot start; the message is one line that says what to do."""


class UnknownModel(BadRequest):
    """The model id names a provider Sentinel does not route to, or no model at all."""

    code = "MODEL_NOT_FOUND"
