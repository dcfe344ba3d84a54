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
    """Admits requests: a tenant for /v1 routes, the admin key for admin routes."""

    def __init__(
        self,
        keys: ApiKeys,
        limiter: RateLimiter,
        *,
        default_limit: int,
        admin_key: str | None,
        breaker: CacheBreaker | None = None,
        budget: float = 0.2,
    ) -> None:
        self.keys = keys
        self._limiter = limiter
        self._default_limit = default_limit
        self._admin_digest = None if admin_key is None else digest(admin_key)
        self._breaker = breaker
        self._budget = budget
        # "keys" is sticky: once keys exist, an outage or an eviction never re-opens Sentinel.
        self._keys_seen = keys.from_settings
        self._recent: dict[bytes, tuple[float, ApiKey]] = {}

    async def mode(self) -> AuthMode:
        """ "keys" once any API key is configured or was created; "open" before."""
        if self._keys_seen:
            return "keys"
        try:
            configured = await self._redis(self.keys.configured)
        except CacheUnavailable:
            return "open"  # never saw a key, and none is in the settings
        self._keys_seen = configured
        return "keys" if configured else "open"

    async def admit(self, credential: str | None) -> str:
        """The caller's tenant ("" when Sentinel runs open); InvalidApiKey or RateLimited."""
        key = await self._resolve(credential) if credential else None
        if key is None:
            if await self.mode() == "keys":
                if credential:
                    raise InvalidApiKey("the API key is not valid (unknown or revoked)")
                raise InvalidApiKey(f"an API key is required: {HOW_TO_SEND}")
            return ""  # open: no key exists, so any (e.g. an SDK's placeholder) is ignored
        self._keys_seen = True
        await self._count(key)
        return key.tenant

    async def _resolve(self, credential: str) -> ApiKey | None:
        """The key's record; with Redis away, a key seen valid in the last few minutes."""
        hashed = digest(credential)
        try:
            key = await self._redis(lambda: self.keys.resolve(credential))
        except CacheUnavailable:
            seen = self._recent.get(hashed)
            if seen is not None and time.monotonic() - seen[0] < REMEMBER_KEYS_SECONDS:
                return seen[1]
            raise
        if key is None:
            self._recent.pop(hashed, None)  # revoked or unknown: forget it at once
        else:
            self._recent[hashed] = (time.monotonic(), key)
        return key

    async def _redis(self, operation: Callable[[], Awaitable[T]]) -> T:
        """A Redis call through the cache's breaker (fast failure while Redis is away)."""
        if self._breaker is None:
            return await operation()
        return await self._breaker.call(operation, budget=self._budget, what="api key check")

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
