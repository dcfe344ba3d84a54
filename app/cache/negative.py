"""Negative caching: a provider failure that survived retries, remembered per exact key.

For NEGATIVE_TTL seconds the same request (same scope, same question) is answered with the
same error from Redis instead of calling the provider again, so an outage or a 429 storm
does not become a retry storm. A remembered failure is never an answer: it is stored apart
from entries (its own key prefix, not in the index) and only ever raised as an error.
"""

from __future__ import annotations

import msgspec
from redis.asyncio import Redis

from app.cache import keys
from app.cache.errors import redis_errors_as_unavailable
from app.errors import UpstreamError

PREFIX = f"{keys.ROOT}:negative:"


class Failure(msgspec.Struct, frozen=True, kw_only=True):
    """What is remembered of a failure: enough to answer it again, nothing of the prompt."""

    status: int
    code: str
    message: str
    retry_after: str | None = None


class RememberedFailure(UpstreamError):
    """A failure answered from the negative cache (same status, code and message as before)."""

    def __init__(self, failure: Failure, *, seconds_left: int) -> None:
        headers = {"X-Sentinel-Cache": "NEGATIVE-HIT", "Retry-After": str(max(1, seconds_left))}
        super().__init__(
            f"{failure.message} (remembered; not retried for {seconds_left} s)", headers=headers
        )
        self.status_code = failure.status
        self.code = failure.code


class NegativeCache:
    """Failures by exact entry id, each with a short TTL (0 turns the feature off)."""

    def __init__(self, redis: Redis, *, ttl: int) -> None:
        self._redis = redis
        self.ttl = ttl

    @property
    def enabled(self) -> bool:
        """Whether failures are remembered at all."""
        return self.ttl > 0

    @redis_errors_as_unavailable
    async def remember(self, entry_id: str, error: UpstreamError) -> None:
        """Keep a failure for `ttl` seconds."""
        if not self.enabled:
            return
        failure = Failure(
            status=error.status_code,
            code=error.code,
            message=error.message,
            retry_after=error.headers.get("Retry-After"),
        )
        await self._redis.set(PREFIX + entry_id, msgspec.json.encode(failure), ex=self.ttl)

    @redis_errors_as_unavailable
    async def check(self, entry_id: str) -> None:
        """Raise the remembered failure for this key, if there is one."""
        if not self.enabled:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(PREFIX + entry_id)
            pipe.ttl(PREFIX + entry_id)
            raw, seconds_left = await pipe.execute()
        if raw is None:
            return
        failure = msgspec.json.decode(raw, type=Failure)
        raise RememberedFailure(failure, seconds_left=int(seconds_left))

    @redis_errors_as_unavailable
    async def forget(self, entry_id: str) -> None:
        """Drop a remembered failure (a fresh answer replaced it)."""
        if self.enabled:
            await self._redis.delete(PREFIX + entry_id)
