"""Metrics over time: the seed's "Metrics Over Time" table for any period, tenant and model,
and what the dashboard reads beside it (recent near misses, this process's layer latencies).

Totals per hour and per day are written by every instance's Recorder (cache/metrics.py keeps
14 days of hours and 400 days of days); a bucket here adds up the (tenant, model) rows that
match the filter.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from typing import Literal

import msgspec

from app.cache.metrics import HISTORY_RETENTION, HISTORY_SECONDS, MetricsStore, percentile
from app.errors import BadRequest
from app.observability.recorder import LAYERS, NearMiss, Recorder, iso_utc

Bucket = Literal["hour", "day"]
# Without `since`: the last 48 hours, or the last 30 days.
DEFAULT_SPAN = {"hour": 48 * 3600, "day": 30 * 86400}


class HitRate(msgspec.Struct, kw_only=True):
    """Hits over decided requests (hits + misses), by layer and in all."""

    exact: float
    semantic: float
    total: float


class HistoryBucket(msgspec.Struct, kw_only=True):
    """One hour or day: the seed's table row (hit rate, latency, cost per 1,000 requests)."""

    start: str  # ISO 8601, UTC
    requests: int
    exact_hits: int
    semantic_hits: int
    misses: int
    errors: int
    hit_rate: HitRate
    avg_latency_ms: float
    p95_latency_ms: float | None
    # What the provider was paid per 1,000 requests (hits cost nothing).
    cost_per_1000_usd: float
    spent_usd: float
    saved_usd: float
    tokens_saved: int


class History(msgspec.Struct, kw_only=True):
    """Body of GET /v1/metrics/history: buckets with requests, oldest first."""

    bucket: Bucket
    tenant: str | None
    model: str | None
    buckets: list[HistoryBucket]


class NearMisses(msgspec.Struct, kw_only=True):
    """Body of GET /v1/metrics/near-misses: refused candidates, newest first."""

    near_misses: list[NearMiss]


class LayerLatency(msgspec.Struct, kw_only=True):
    count: int
    p50: float | None
    p95: float | None


class Layers(msgspec.Struct, kw_only=True):
    """Body of GET /v1/metrics/layers: time in each layer since start, this process."""

    latency_ms: dict[str, LayerLatency]


async def history(
    store: MetricsStore,
    *,
    bucket: Bucket,
    tenant: str | None,
    model: str | None,
    since: float | None,
    until: float | None,
    now: float | None = None,
) -> History:
    """The buckets between `since` and `until` (epoch seconds) with at least one request."""
    now = time.time() if now is None else now
    size = HISTORY_SECONDS[bucket]
    if since is not None and until is not None and since > until:
        raise BadRequest("since must be before until", param="since")
    until = now if until is None else min(until, now)
    since = until - DEFAULT_SPAN[bucket] if since is None else since
    since = max(since, now - HISTORY_RETENTION[bucket])  # older buckets have expired
    if since > until:
        return History(bucket=bucket, tenant=tenant, model=model, buckets=[])
    first = int(since) - int(since) % size
    starts = list(range(first, int(until) + 1, size))
    rows = await store.history(bucket, starts)
    buckets = []
    for start, row in zip(starts, rows, strict=True):
        totals, latency = _matching(row, tenant, model)
        if totals["requests"]:
            buckets.append(_bucket(start, totals, latency))
    return History(bucket=bucket, tenant=tenant, model=model, buckets=buckets)


def _matching(
    row: dict[str, float], tenant: str | None, model: str | None
) -> tuple[defaultdict[str, float], dict[int, int]]:
    """The sums of the (tenant, model) rows that match, and their latency histogram."""
    totals: defaultdict[str, float] = defaultdict(float)
    latency: Counter[int] = Counter()
    for field, amount in row.items():
        row_tenant, row_model, name = field.split("\t", 2)
        if (tenant is not None and row_tenant != tenant) or (
            model is not None and row_model != model
        ):
            continue
        if name.startswith("lat."):
            latency[int(name[4:])] += int(amount)
        else:
            totals[name] += amount
    return totals, dict(latency)


def _bucket(start: int, totals: defaultdict[str, float], latency: dict[int, int]) -> HistoryBucket:
    requests = int(totals["requests"])
    exact, semantic = int(totals["exact"]), int(totals["semantic"])
    decided = exact + semantic + int(totals["miss"])
    spent = totals["usd_spent"]
    return HistoryBucket(
        start=iso_utc(start),
        requests=requests,
        exact_hits=exact,
        semantic_hits=semantic,
        misses=int(totals["miss"]),
        errors=int(totals["error"]),
        hit_rate=HitRate(
            exact=round(exact / decided, 4) if decided else 0.0,
            semantic=round(semantic / decided, 4) if decided else 0.0,
            total=round((exact + semantic) / decided, 4) if decided else 0.0,
        ),
        avg_latency_ms=round(totals["latency_ms"] / requests, 3),
        p95_latency_ms=percentile(latency, 95),
        cost_per_1000_usd=round(spent / requests * 1000, 9),
        spent_usd=round(spent, 9),
        saved_usd=round(totals["usd_saved"], 9),
        tokens_saved=int(totals["tokens_saved"]),
    )


async def near_misses(store: MetricsStore, *, tenant: str | None, limit: int) -> NearMisses:
    """The most recent refused candidates (of `tenant` only, unless None)."""
    shown: list[NearMiss] = []
    for raw in await store.near_misses():
        near = msgspec.json.decode(raw, type=NearMiss)
        if tenant is not None and near.tenant != tenant:
            continue
        shown.append(near)
        if len(shown) >= limit:
            break
    return NearMisses(near_misses=shown)


def layers(recorder: Recorder) -> Layers:
    """Percentiles of the time each layer took, from this process's histograms."""
    latency: dict[str, LayerLatency] = {}
    for layer in LAYERS:
        histogram = dict(recorder.layers[layer])
        latency[layer] = LayerLatency(
            count=sum(histogram.values()),
            p50=percentile(histogram, 50),
            p95=percentile(histogram, 95),
        )
    return Layers(latency_ms=latency)
