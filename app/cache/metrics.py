"""Counters, latency histograms and their history kept in Redis, so every instance reports one
truth. Written in batches by observability.Recorder, off the request path."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

import msgspec
from redis.asyncio import Redis

from app.cache.errors import redis_errors_as_unavailable
from app.cache.keys import METRICS_KEY, text

Outcome = Literal["exact", "semantic", "miss", "error"]


class Counts(TypedDict, total=False):
    """What one request adds besides its outcome and latency (Recorder.record's rest)."""

    upstream_called: bool
    upstream_failed: bool
    tokens_saved: int
    tokens_spent: int
    usd_saved: float
    usd_spent: float
    # A miss the provider answered while the cache was bypassed; a remembered failure served.
    bypass: bool
    negative_hit: bool


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


COUNTER_OF: dict[Outcome, str] = {
    "exact": "exact_hits",
    "semantic": "semantic_hits",
    "miss": "misses",
    "error": "errors",
}


def _latency_key(outcome: Outcome) -> str:
    return f"{METRICS_KEY}:latency:{outcome}"


# History: one hash per hour and per day, fields "<tenant>\t<model>\t<name>", kept this long.
HISTORY_RETENTION = {"hour": 14 * 86400, "day": 400 * 86400}
HISTORY_SECONDS = {"hour": 3600, "day": 86400}
# Counters written with HINCRBYFLOAT; every other field is an integer.
FLOAT_FIELDS = frozenset({"usd_saved", "usd_spent", "latency_ms"})
# The latest near misses (JSON), for the dashboard: diagnostics, so they carry a TTL (renewed
# by each write) and volatile-lru may evict them before any entry under memory pressure.
NEAR_MISSES_KEY = f"{METRICS_KEY}:near_misses"
NEAR_MISSES_KEPT = 200
NEAR_MISSES_TTL = 7 * 86400


def history_key(bucket: str, start: int) -> str:
    """The hash holding one hour's or day's counters (`start`: epoch seconds)."""
    return f"{METRICS_KEY}:history:{bucket}:{start}"


@dataclass
class Batch:
    """Counts gathered in process since the last flush, written in one round trip."""

    totals: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    latency: Counter[tuple[Outcome, int]] = field(default_factory=Counter)
    # (span, start) -> field -> amount
    history: dict[tuple[str, int], defaultdict[str, float]] = field(default_factory=dict)
    near_misses: list[bytes] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.totals or self.latency or self.history or self.near_misses)

    def absorb(self, other: Batch) -> None:
        """Add another batch's counts to this one (a failed flush's, kept for the next)."""
        _merge(self.totals, other.totals)
        self.latency.update(other.latency)
        for where, counts in other.history.items():
            _merge(self.history.setdefault(where, defaultdict(float)), counts)
        self.near_misses[:0] = other.near_misses


def _merge(into: defaultdict[str, float], counts: dict[str, float]) -> None:
    for name, amount in counts.items():
        into[name] += amount


def _add(pipe: Any, key: str, name: str, amount: float) -> None:
    if name.rsplit("\t", 1)[-1] in FLOAT_FIELDS:
        pipe.hincrbyfloat(key, name, amount)
    else:
        pipe.hincrby(key, name, int(amount))


class MetricsStore:
    """Writes counted batches to Redis and reads totals and history back."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    @redis_errors_as_unavailable
    async def add(self, batch: Batch) -> None:
        """Write a batch in one round trip (totals, latency, history, near misses)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for name, amount in batch.totals.items():
                if amount:
                    _add(pipe, METRICS_KEY, name, amount)
            for (outcome, bucket), count in batch.latency.items():
                pipe.hincrby(_latency_key(outcome), str(bucket), count)
            for (span, start), counts in batch.history.items():
                key = history_key(span, start)
                for name, amount in counts.items():
                    if amount:
                        _add(pipe, key, name, amount)
                pipe.expire(key, HISTORY_RETENTION[span] + HISTORY_SECONDS[span])
            if batch.near_misses:
                pipe.lpush(NEAR_MISSES_KEY, *batch.near_misses)
                pipe.ltrim(NEAR_MISSES_KEY, 0, NEAR_MISSES_KEPT - 1)
                pipe.expire(NEAR_MISSES_KEY, NEAR_MISSES_TTL)
            await pipe.execute()

    @redis_errors_as_unavailable
    async def history(self, bucket: str, starts: list[int]) -> list[dict[str, float]]:
        """The counters of each hour or day in `starts` ({} where nothing was counted)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for start in starts:
                pipe.hgetall(history_key(bucket, start))
            hashes = await pipe.execute()
        return [{text(k): float(v) for k, v in raw.items()} for raw in hashes]

    @redis_errors_as_unavailable
    async def near_misses(self) -> list[bytes]:
        """The recent near misses, newest first, as written (JSON)."""
        raw = await self._redis.lrange(NEAR_MISSES_KEY, 0, NEAR_MISSES_KEPT - 1)
        return [item if isinstance(item, bytes) else item.encode() for item in raw]

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
