"""Who may call Sentinel: API keys resolved to tenants, per-key rate limits, the admin key."""

from __future__ import annotations

import hmac
from typing import Literal

from app.cache.apikeys import ApiKey, ApiKeys, digest
from app.cache.ratelimit import RateLimiter
from app.errors import AdminDisabled, InvalidApiKey, RateLimited

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
    ) -> None:
        self.keys = keys
        self._limiter = limiter
        self._default_limit = default_limit
        self._admin_digest = None if admin_key is None else digest(admin_key)

    async def mode(self) -> AuthMode:
        """ "keys" once any API key is configured or was created; "open" before."""
        return "keys" if await self.keys.configured() else "open"

    async def admit(self, credential: str | None) -> str:
        """The caller's tenant ("" when Sentinel runs open); InvalidApiKey or RateLimited."""
        key = await self.keys.resolve(credential) if credential else None
        if key is None:
            if await self.keys.configured():
                if credential:
                    raise InvalidApiKey("the API key is not valid (unknown or revoked)")
                raise InvalidApiKey(f"an API key is required: {HOW_TO_SEND}")
            return ""  # open: no key exists, so any (e.g. an SDK's placeholder) is ignored
        await self._count(key)
        return key.tenant

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
        decision = await self._limiter.hit(key.id, limit)
        if not decision.allowed:
            raise RateLimited(
                f"rate limit of {limit} requests per minute reached for this API key; "
                f"retry in {decision.retry_after} s",
                retry_after=decision.retry_after,
            )
