"""Counters and latency histograms kept in Redis, so every instance reports one truth."""

from __future__ import annotations

import math
from typing import Literal, TypedDict

import msgspec
from redis.asyncio import Redis

from app.cache.errors import redis_errors_as_unavailable
from app.cache.keys import METRICS_KEY, text

Outcome = Literal["exact", "semantic", "miss", "error"]


class Counts(TypedDict, total=False):
    """What one request adds besides its outcome and latency (MetricsStore.record's rest)."""

    upstream_called: bool
    upstream_failed: bool
    tokens_saved: int
    usd_saved: float
    usd_spent: float


# Latency buckets grow by 10% from 0.05 ms, so a percentile read from the histogram is
# within ~5% of the true value; 170 buckets reach past 10 minutes.
_BUCKET_BASE_MS = 0.05
_BUCKET_RATIO = 1.1
_BUCKETS = 170


def bucket_of(latency_ms: float) -> int:
    """Histogram bucket index for a latency."""
    if latency_ms <= _BUCKET_BASE_MS:
        return 0
    index = math.ceil(math.log(latency_ms / _BUCKET_BASE_MS, _BUCKET_RATIO))
    return min(index, _BUCKETS - 1)


def bucket_value(index: int) -> float:
    """Representative latency of a bucket: the geometric middle of its bounds."""
    upper = _BUCKET_BASE_MS * _BUCKET_RATIO**index
    return upper / math.sqrt(_BUCKET_RATIO) if index else _BUCKET_BASE_MS


def percentile(histogram: dict[int, int], q: float) -> float | None:
    """The q-th percentile (0..100) read from a bucket histogram, or None when it is empty."""
    total = sum(histogram.values())
    if total == 0:
        return None
    rank = max(1, math.ceil(q / 100 * total))
    seen = 0
    for index in sorted(histogram):
        seen += histogram[index]
        if seen >= rank:
            return round(bucket_value(index), 3)
    return None  # pragma: no cover - the loop always reaches rank


class Counters(msgspec.Struct, kw_only=True):
    """Raw counters as read from Redis."""

    requests: int = 0
    exact_hits: int = 0
    semantic_hits: int = 0
    misses: int = 0
    errors: int = 0
    upstream_calls: int = 0
    upstream_errors: int = 0
    tokens_saved: int = 0
    usd_saved: float = 0.0
    usd_spent: float = 0.0


_COUNTER_OF: dict[Outcome, str] = {
    "exact": "exact_hits",
    "semantic": "semantic_hits",
    "miss": "misses",
    "error": "errors",
}


def _latency_key(outcome: Outcome) -> str:
    return f"{METRICS_KEY}:latency:{outcome}"


class MetricsStore:
    """Records request outcomes and reads them back."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    @redis_errors_as_unavailable
    async def record(
        self,
        outcome: Outcome,
        *,
        latency_ms: float,
        upstream_called: bool = False,
        upstream_failed: bool = False,
        tokens_saved: int = 0,
        usd_saved: float = 0.0,
        usd_spent: float = 0.0,
    ) -> None:
        """Count one request in a single round trip."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hincrby(METRICS_KEY, "requests", 1)
            pipe.hincrby(METRICS_KEY, _COUNTER_OF[outcome], 1)
            pipe.hincrby(_latency_key(outcome), str(bucket_of(latency_ms)), 1)
            if upstream_called:
                pipe.hincrby(METRICS_KEY, "upstream_calls", 1)
            if upstream_failed:
                pipe.hincrby(METRICS_KEY, "upstream_errors", 1)
            if tokens_saved:
                pipe.hincrby(METRICS_KEY, "tokens_saved", tokens_saved)
            if usd_saved:
                pipe.hincrbyfloat(METRICS_KEY, "usd_saved", usd_saved)
            if usd_spent:
                pipe.hincrbyfloat(METRICS_KEY, "usd_spent", usd_spent)
            await pipe.execute()

    @redis_errors_as_unavailable
    async def read(self) -> tuple[Counters, dict[Outcome, dict[int, int]]]:
        """Counters and the per-outcome latency histograms."""
        outcomes: tuple[Outcome, ...] = ("exact", "semantic", "miss", "error")
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(METRICS_KEY)
            for outcome in outcomes:
                pipe.hgetall(_latency_key(outcome))
            raw, *histograms = await pipe.execute()
        counters = msgspec.convert(
            {text(k): text(v) for k, v in raw.items()}, Counters, strict=False
        )
        return counters, {
            outcome: {int(k): int(v) for k, v in histogram.items()}
            for outcome, histogram in zip(outcomes, histograms, strict=True)
        }

    @redis_errors_as_unavailable
    async def reset(self) -> None:
        """Forget every counter (tests and operators starting a fresh measurement)."""
        await self._redis.delete(
            METRICS_KEY, *(_latency_key(o) for o in ("exact", "semantic", "miss", "error"))
        )
