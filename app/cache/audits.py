"""What live verification and feedback found, counted per tenant and model across instances.

    sentinel:audits                     SET   "<tenant>\\x1f<model_id>" of every pair counted
    sentinel:audit:<tenant>\\x1f<model> HASH  checked, disagreed, usd_spent (verification),
                                              feedback_correct, feedback_wrong

The pairs are bounded by tenants times routable models. Nothing here carries a TTL: under
volatile-lru these counters are never evicted, like the metrics.
"""

from __future__ import annotations

import msgspec
from redis.asyncio import Redis

from app.cache.errors import redis_errors_as_unavailable
from app.cache.keys import ROOT, text

INDEX_KEY = f"{ROOT}:audits"
PREFIX = f"{ROOT}:audit:"
_SEPARATOR = "\x1f"


class AuditCounts(msgspec.Struct, kw_only=True):
    """One tenant and model's counts."""

    tenant: str
    model_id: str
    checked: int = 0
    disagreed: int = 0
    usd_spent: float = 0.0
    feedback_correct: int = 0
    feedback_wrong: int = 0


class AuditStore:
    """Counts verified hits, disagreements, their cost and feedback; reads them back."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    @redis_errors_as_unavailable
    async def record_check(
        self, tenant: str, model_id: str, *, agreed: bool, usd_spent: float
    ) -> None:
        """One semantic hit re-asked of the provider: whether the answers agreed, its cost."""
        pair = tenant + _SEPARATOR + model_id
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.sadd(INDEX_KEY, pair)
            pipe.hincrby(PREFIX + pair, "checked", 1)
            if not agreed:
                pipe.hincrby(PREFIX + pair, "disagreed", 1)
            if usd_spent:
                pipe.hincrbyfloat(PREFIX + pair, "usd_spent", usd_spent)
            await pipe.execute()

    @redis_errors_as_unavailable
    async def record_feedback(self, tenant: str, model_id: str, *, correct: bool) -> None:
        """One user's verdict on an answer."""
        pair = tenant + _SEPARATOR + model_id
        field = "feedback_correct" if correct else "feedback_wrong"
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.sadd(INDEX_KEY, pair)
            pipe.hincrby(PREFIX + pair, field, 1)
            await pipe.execute()

    @redis_errors_as_unavailable
    async def read(self) -> list[AuditCounts]:
        """Every tenant and model's counts, sorted."""
        pairs = sorted(text(pair) for pair in await self._redis.smembers(INDEX_KEY))
        async with self._redis.pipeline(transaction=False) as pipe:
            for pair in pairs:
                pipe.hgetall(PREFIX + pair)
            rows = await pipe.execute()
        counts = []
        for pair, row in zip(pairs, rows, strict=True):
            tenant, _, model_id = pair.partition(_SEPARATOR)
            fields = {text(name): text(value) for name, value in row.items()}
            counts.append(
                msgspec.convert(
                    {**fields, "tenant": tenant, "model_id": model_id}, AuditCounts, strict=False
                )
            )
        return counts
