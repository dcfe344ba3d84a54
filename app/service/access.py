"""Who may call Sentinel: API keys resolved to tenants, per-key rate limits, the admin key."""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

from app.cache.apikeys import ApiKey, ApiKeys, digest
from app.cache.breaker import CacheBreaker
from app.cache.ratelimit import RateLimiter
from app.errors import AdminDisabled, CacheUnavailable, InvalidApiKey, RateLimited

log = logging.getLogger("sentinel.access")
T = TypeVar("T")

# While Redis cannot be asked, a key that was valid this recently is still admitted (the
# cache being down must not lock tenants out); a key never seen is refused with a 503.
REMEMBER_KEYS_SECONDS = 300.0

AuthMode = Literal["open", "keys"]

HOW_TO_SEND = "send it as `Authorization: Bearer <key>` or `X-API-Key: <key>`"


class AccessControl:
    """Admits requests: a tenant for /v1 routes, the admin key for admin routes.

    The mode is configuration (SENTINEL_AUTH), fixed for the process's life. "open" admits
    everyone as tenant "" without touching Redis, whatever credential comes along (the OpenAI
    SDK always sends one). "keys" wants a valid key: SENTINEL_API_KEYS' keys are checked in
    memory; created keys are looked up in Redis, and while Redis cannot answer only a key seen
    valid in the last few minutes is admitted; any other request gets 503, never admission.
    """

    def __init__(
        self,
        keys: ApiKeys,
        limiter: RateLimiter,
        *,
        mode: AuthMode,
        default_limit: int,
        admin_key: str | None,
        breaker: CacheBreaker,
        budget: float,
    ) -> None:
        self.keys = keys
        self.mode: AuthMode = mode
        self._limiter = limiter
        self._default_limit = default_limit
        self._admin_digest = None if admin_key is None else digest(admin_key)
        self._breaker = breaker
        self._budget = budget
        self._recent: dict[bytes, tuple[float, ApiKey]] = {}

    async def admit(self, credential: str | None) -> str:
        """The caller's tenant ("" when Sentinel runs open); InvalidApiKey or RateLimited.

        CacheUnavailable (503) when Redis must be asked about a key and cannot answer.
        """
        if self.mode == "open":
            return ""  # no key is asked for, so any (e.g. an SDK's placeholder) is ignored
        if not credential:
            raise InvalidApiKey(f"an API key is required: {HOW_TO_SEND}")
        key = self.keys.resolve_configured(credential) or await self._resolve_created(credential)
        if key is None:
            raise InvalidApiKey("the API key is not valid (unknown or revoked)")
        await self._count(key)
        return key.tenant

    async def _resolve_created(self, credential: str) -> ApiKey | None:
        """A created key's record; with Redis away, a key seen valid in the last few minutes."""
        hashed = digest(credential)
        try:
            key = await self._redis(lambda: self.keys.resolve_created(credential))
        except CacheUnavailable as exc:
            seen = self._recent.get(hashed)
            if seen is not None and time.monotonic() - seen[0] < REMEMBER_KEYS_SECONDS:
                return seen[1]
            raise CacheUnavailable(
                "cannot check this API key: Redis, which holds created keys, does not answer "
                f"({exc.message}); retry shortly"
            ) from None
        if key is None:
            self._recent.pop(hashed, None)  # revoked or unknown: forget it at once
        else:
            self._recent[hashed] = (time.monotonic(), key)
        return key

    async def _redis(self, operation: Callable[[], Awaitable[T]]) -> T:
        """A Redis call through the cache's breaker (fast failure while Redis is away)."""
        return await self._breaker.call(operation, budget=self._budget, what="api key check")

    def is_admin(self, credential: str | None) -> bool:
        """Whether `credential` is SENTINEL_ADMIN_KEY (False while none is set)."""
        if self._admin_digest is None or not credential:
            return False
        return hmac.compare_digest(digest(credential), self._admin_digest)

    def admit_admin(self, credential: str | None) -> None:
        """Pass for the admin key; AdminDisabled when none is set, InvalidApiKey otherwise."""
        if self._admin_digest is None:
            raise AdminDisabled("admin routes are disabled: set SENTINEL_ADMIN_KEY to enable them")
        # Digests of equal length: the comparison's time says nothing about the key.
        if not credential or not hmac.compare_digest(digest(credential), self._admin_digest):
            raise InvalidApiKey(
                f"admin routes need the admin key (SENTINEL_ADMIN_KEY): {HOW_TO_SEND}"
            )

    async def _count(self, key: ApiKey) -> None:
        limit = (
            self._default_limit if key.rate_limit_per_minute is None else key.rate_limit_per_minute
        )
        if limit <= 0:
            return
        try:
            decision = await self._redis(lambda: self._limiter.hit(key.id, limit))
        except CacheUnavailable as exc:
            # The limit protects the provider quota; losing it for an outage beats refusing
            # every request. Fail open, and say so.
            log.warning("rate limit not applied: %s", exc.message)
            return
        if not decision.allowed:
            raise RateLimited(
                f"rate limit of {limit} requests per minute reached for this API key; "
                f"retry in {decision.retry_after} s",
                retry_after=decision.retry_after,
            )
