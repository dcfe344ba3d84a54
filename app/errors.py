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
    # What the provider answered, for the metrics' `status` label: its HTTP status when one
    # came back ("503"), else what went wrong ("timeout", "connection", "bad_response").
    upstream_status = "error"


class UpstreamRejected(UpstreamError):
    """The provider refused the request itself (HTTP 400/404/413/422): the client's to fix."""

    status_code = 400
    code = "UPSTREAM_REJECTED"
    upstream_status = "4xx"


class UpstreamRateLimited(UpstreamError):
    """The provider kept answering 429 after our retries."""

    code = "UPSTREAM_RATE_LIMITED"
    upstream_status = "429"


class UpstreamUnavailable(UpstreamError):
    """The provider could not be reached (connection refused, reset, DNS)."""

    code = "UPSTREAM_UNAVAILABLE"
    upstream_status = "connection"


class UpstreamBadResponse(UpstreamError):
    """The provider answered 2xx with a body we cannot read, or an empty answer."""

    code = "UPSTREAM_BAD_RESPONSE"
    upstream_status = "bad_response"


class UpstreamTimeout(UpstreamError):
    """The provider did not answer within the deadline."""

    status_code = 504
    code = "UPSTREAM_TIMEOUT"
    upstream_status = "timeout"


class UpstreamNotConfigured(UpstreamError):
    """No provider key is set, so a cache miss cannot be answered."""

    status_code = 503
    code = "UPSTREAM_NOT_CONFIGURED"
    upstream_status = "not_configured"


class EmbeddingError(SentinelError):
    """The embedding provider failed."""

    status_code = 502
    code = "EMBEDDING_ERROR"


class EmbeddingSkipped(EmbeddingError):
    """An embedding was skipped or cut short (its breaker open, or past EMBED_TIMEOUT_MS).

    The request path catches it and goes on without the semantic layer.
    """

    status_code = 503
    code = "EMBEDDING_UNAVAILABLE"


class VerificationError(SentinelError):
    """The hit verifier failed on a candidate; the caller treats the candidate as a miss."""

    status_code = 503
    code = "VERIFIER_ERROR"


class CacheUnavailable(SentinelError):
    """Redis did not answer."""

    status_code = 503
    code = "CACHE_UNAVAILABLE"


class StartupError(Exception):
    """Sentinel cannot start; the message is one line that says what to do."""


class UnknownModel(BadRequest):
    """The model id names a provider Sentinel does not route to, or no model at all."""

    code = "MODEL_NOT_FOUND"


class InvalidApiKey(SentinelError):
    """No API key, or one Sentinel does not know (or revoked), where a key is required."""

    status_code = 401
    code = "INVALID_API_KEY"

    def __init__(self, message: str) -> None:
        # RFC 9110: a 401 names the scheme the client should use.
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="sentinel"'})


class RateLimited(SentinelError):
    """The API key used up its requests per minute; Retry-After says when to come back."""

    status_code = 429
    code = "RATE_LIMITED"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after


class AdminDisabled(SentinelError):
    """An admin route was called while SENTINEL_ADMIN_KEY is unset."""

    status_code = 403
    code = "ADMIN_DISABLED"


class NotFound(SentinelError):
    """The thing a path names does not exist."""

    status_code = 404
    code = "NOT_FOUND"


class KeyNotFound(NotFound):
    """No API key has this id."""

    code = "KEY_NOT_FOUND"


class EntryNotFound(NotFound):
    """No cache entry has this id (it may have expired)."""

    code = "ENTRY_NOT_FOUND"


class KeyNotRevocable(SentinelError):
    """The key comes from SENTINEL_API_KEYS: only changing the setting removes it."""

    status_code = 409
    code = "KEY_NOT_REVOCABLE"
