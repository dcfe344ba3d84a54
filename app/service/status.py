"""What /health and /v1/metrics report, computed from the cache and the providers."""

from __future__ import annotations

from typing import Literal

import msgspec

from app.cache.metrics import percentile
from app.errors import CacheUnavailable
from app.service.access import AccessControl
from app.service.pricing import PRICE_SOURCE
from app.service.query import QueryService


class Health(msgspec.Struct, kw_only=True):
    """Body of GET /health."""

    status: Literal["ok", "degraded"]
    reasons: list[str]
    redis: Literal["ok", "unreachable"]
    redis_mode: Literal["embedded", "external"]
    # "keys": every /v1 route needs an API key; "open": no key exists, anyone may call;
    # "unknown": Redis (which holds created keys) did not answer.
    auth: Literal["open", "keys", "unknown"]
    index: str
    index_exists: bool
    embedder: str
    embedding_dimension: int
    # How semantic hits are decided: cosine >= similarity_threshold, then (guard on) the
    # guard's probability >= guard_threshold.
    similarity_threshold: float
    guard: Literal["on", "off"]
    guard_threshold: float | None
    # The default provider (model names without a `provider/` prefix go there)...
    upstream: str
    upstream_status: Literal["configured", "not_configured"]
    upstream_model: str
    # ...and every provider: a request routed to a not_configured one answers 503.
    providers: dict[str, Literal["configured", "not_configured"]]


class LatencySummary(msgspec.Struct, kw_only=True):
    """Latency percentiles in ms, read from histograms (about 5% resolution)."""

    count: int
    p50: float | None
    p95: float | None


class Metrics(msgspec.Struct, kw_only=True):
    """Body of GET /v1/metrics: one truth for every instance sharing the Redis."""

    requests: int
    exact_hits: int
    semantic_hits: int
    misses: int
    errors: int
    hit_rate: float
    upstream_calls: int
    upstream_errors: int
    latency_ms: dict[str, LatencySummary]
    tokens_saved: int
    usd_saved: float
    usd_spent: float
    entries: int
    price_source: str


async def health(
    service: QueryService,
    *,
    redis_mode: Literal["embedded", "external"],
    access: AccessControl,
) -> Health:
    """Redis answers and the index exists: ok; anything else: degraded, with reasons."""
    reasons: list[str] = []
    redis_ok = index_ok = False
    auth: Literal["open", "keys", "unknown"] = "unknown"
    try:
        redis_ok = await service.store.ping()
        index_ok = await service.store.index_exists()
        auth = await access.mode()
    except CacheUnavailable as exc:
        reasons.append(f"redis: {exc.message}")
    if redis_ok and not index_ok:
        reasons.append(f"index {service.store.index_name} does not exist")
    default = service.providers.default_provider
    return Health(
        status="ok" if redis_ok and index_ok else "degraded",
        reasons=reasons,
        redis="ok" if redis_ok else "unreachable",
        redis_mode=redis_mode,
        auth=auth,
        index=service.store.index_name,
        index_exists=index_ok,
        embedder=service.embedder.id,
        embedding_dimension=service.embedder.dimension,
        similarity_threshold=service.similarity_threshold,
        guard="off" if service.guard is None else "on",
        guard_threshold=None if service.guard is None else service.guard.threshold,
        upstream=default.name,
        upstream_status="configured" if default.configured else "not_configured",
        upstream_model=default.default_model,
        providers={
            name: "configured" if provider.configured else "not_configured"
            for name, provider in service.providers.providers.items()
        },
    )


async def metrics(service: QueryService) -> Metrics:
    """Counters, hit rate and latency percentiles from Redis, plus the index size."""
    counters, histograms = await service.metrics.read()
    hits = counters.exact_hits + counters.semantic_hits
    decided = hits + counters.misses
    merged_hits = dict(histograms["exact"])
    for bucket, count in histograms["semantic"].items():
        merged_hits[bucket] = merged_hits.get(bucket, 0) + count
    latency = {
        "hit": merged_hits,
        "exact": histograms["exact"],
        "semantic": histograms["semantic"],
        "miss": histograms["miss"],
        "error": histograms["error"],
    }
    return Metrics(
        requests=counters.requests,
        exact_hits=counters.exact_hits,
        semantic_hits=counters.semantic_hits,
        misses=counters.misses,
        errors=counters.errors,
        hit_rate=round(hits / decided, 4) if decided else 0.0,
        upstream_calls=counters.upstream_calls,
        upstream_errors=counters.upstream_errors,
        latency_ms={
            name: LatencySummary(
                count=sum(h.values()), p50=percentile(h, 50), p95=percentile(h, 95)
            )
            for name, h in latency.items()
        },
        tokens_saved=counters.tokens_saved,
        usd_saved=round(counters.usd_saved, 9),
        usd_spent=round(counters.usd_spent, 9),
        entries=await service.store.count(),
        price_source=PRICE_SOURCE,
    )
