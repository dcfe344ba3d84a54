"""What /health and /v1/metrics report, computed from the cache and the providers."""

from __future__ import annotations

import logging
from typing import Literal

import msgspec

from app.breaker import CircuitBreaker
from app.cache.metrics import MetricsStore, percentile
from app.errors import CacheUnavailable
from app.observability.prometheus import State
from app.service.access import AccessControl
from app.service.audit import WrongHitEstimate
from app.service.pricing import PRICE_SOURCE
from app.service.query import QueryService
from app.version import VERSION

log = logging.getLogger("sentinel.service")


class Health(msgspec.Struct, kw_only=True):
    """Body of GET /health.

    `status` is "degraded" (with `reasons`) whenever the cache cannot be used fully: Redis
    unreachable, slow or loading (the circuit breaker is open and requests bypass the cache),
    the index missing or still being built. The HTTP status stays 200 as long as Sentinel
    answers requests, which it does through the provider while the cache is bypassed: every
    instance shares the one Redis, so a 503 would make a load balancer pull them all at once
    and turn a cache outage into a full one. 503 only when nothing could be answered: the
    cache is bypassed and the default provider has no key (`serving: false`).
    """

    status: Literal["ok", "degraded"]
    reasons: list[str]
    # Whether requests are answered at all (the HTTP status follows it).
    serving: bool
    # "on": lookups and stores use Redis; "bypass": the circuit breaker is open and every
    # request goes to the provider, answered with X-Sentinel-Cache: BYPASS.
    cache: Literal["on", "bypass"]
    # Answers given without the cache since this process started.
    bypassed_answers: int
    redis: Literal["ok", "unreachable", "loading"]
    redis_mode: Literal["embedded", "external"]
    # The configured mode (SENTINEL_AUTH): "keys", every /v1 route needs an API key; "open",
    # anyone may call. It never depends on Redis.
    auth: Literal["open", "keys"]
    index: str
    index_exists: bool
    # How much of the index RediSearch has built (1.0: all of it; None: unknown).
    index_percent_indexed: float | None
    embedder: str
    embedding_dimension: int
    # "on": requests embed their question; "bypass": the embedder failed or was late too
    # often, its breaker is open and requests skip the semantic layer (exact hits still
    # serve, misses go to the provider and are stored for exact hits) until a probe works.
    embedding: Literal["on", "bypass"]
    # Requests that went without the semantic layer because embedding failed, since start.
    semantic_skipped: int
    # How semantic hits are decided: cosine >= similarity_threshold, then (guard on) the
    # guard's probability >= guard_threshold.
    similarity_threshold: float
    guard: Literal["on", "off"]
    guard_threshold: float | None
    # "on": candidates the guard lets through are screened for near misses and read by the
    # verifier, served when the combined score reaches verify_threshold (MAX_WRONG_HIT_RATE's);
    # "overlap": the guard and the near-miss checks decide, and the verifier must also pass
    # the candidates they serve whose words nearly all recur in the question; "checks": the
    # near-miss checks veto what the guard serves; "off": the guard alone.
    verifier: Literal["on", "overlap", "checks", "off"]
    verify_threshold: float | None
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
    # Live verification and feedback, per tenant and model (a tenant's key sees its own rows):
    # the estimated wrong-hit rate of semantic hits with its 95% interval.
    wrong_hits: list[WrongHitEstimate] = msgspec.field(default_factory=list)


async def health(
    service: QueryService,
    *,
    redis_mode: Literal["embedded", "external"],
    access: AccessControl,
) -> Health:
    """ok when Redis answers and the index is whole; degraded, with reasons, otherwise.

    While the circuit breaker is open this reads its state and makes no Redis call, so a load
    balancer polling /health does not add connection attempts to a Redis that is down.
    """
    breaker = service.breaker
    reasons: list[str] = []
    redis: Literal["ok", "unreachable", "loading"] = "unreachable"
    index_ok = False
    percent: float | None = None
    if not breaker.is_open:
        try:
            await breaker.call(
                service.cache.store.ping, budget=service.cache.write_timeout, what="PING"
            )
            redis = "ok"
            state = await breaker.call(
                service.cache.store.index_state, budget=service.cache.write_timeout, what="FT.INFO"
            )
        except CacheUnavailable as exc:
            reasons.append(f"redis: {exc.message}")
        else:
            index_ok, percent = state.exists, state.percent_indexed if state.exists else None
            if not state.exists:
                reasons.append(f"index {service.cache.store.index_name} does not exist")
                # Lookups fail without it: bypass the cache until the probe recreates it.
                breaker.trip(f"index {service.cache.store.index_name} does not exist")
            elif state.indexing or state.percent_indexed < 1.0:
                reasons.append(
                    f"index {service.cache.store.index_name} is being built: "
                    f"{state.percent_indexed:.0%} of the entries indexed (lookups miss the rest)"
                )
    if breaker.is_open:
        seen = f"{breaker.reason} {breaker.probe_error}"
        if "BusyLoadingError" in seen:
            redis = "loading"
            reasons.append("redis: loading its data after a restart (AOF replay)")
        reasons.append(_open_since(breaker, "cache bypassed", "requests go to the provider"))
    embed_breaker = service.embed_breaker
    embedding_open = embed_breaker is not None and embed_breaker.is_open
    if embed_breaker is not None and embedding_open:
        reasons.append(
            _open_since(
                embed_breaker,
                "embedder: semantic layer skipped",
                "misses go to the provider and are stored for exact hits",
            )
        )
    default = service.providers.default_provider
    serving = default.configured or not breaker.is_open
    return Health(
        status="ok" if not reasons else "degraded",
        reasons=reasons,
        serving=serving,
        cache="bypass" if breaker.is_open else "on",
        bypassed_answers=service.bypassed,
        redis=redis,
        redis_mode=redis_mode,
        auth=access.mode,
        index=service.cache.store.index_name,
        index_exists=index_ok,
        index_percent_indexed=percent,
        embedder=service.embedder.id,
        embedding_dimension=service.embedder.dimension,
        embedding="bypass" if embedding_open else "on",
        semantic_skipped=service.semantic_skipped,
        similarity_threshold=service.similarity_threshold,
        guard="off" if service.guard is None else "on",
        guard_threshold=None if service.guard is None else service.guard.threshold,
        verifier=service.judge.mode,
        verify_threshold=service.planner.default_verify_threshold(),
        upstream=default.name,
        upstream_status="configured" if default.configured else "not_configured",
        upstream_model=default.default_model,
        providers={
            name: "configured" if provider.configured else "not_configured"
            for name, provider in service.providers.providers.items()
        },
    )


def _open_since(breaker: CircuitBreaker, what: str, meaning: str) -> str:
    """`what` for how long, what it means, and why (with the last probe's failure)."""
    probe = f"; last probe: {breaker.probe_error}" if breaker.probe_error else ""
    return f"{what} for {breaker.open_for:.0f} s, {meaning} ({breaker.reason}{probe})"


async def flushed(service: QueryService) -> MetricsStore:
    """The metrics store, once this process's counts since the last flush are in it (so a
    client reads its own requests; other instances' arrive within their flush interval)."""
    recorder = service.cache.metrics
    try:
        await recorder.flush()
    except CacheUnavailable as exc:
        log.warning("metrics read without this process's latest counts: %s", exc.message)
    return recorder.store


async def metrics(service: QueryService, *, tenant: str | None = None) -> Metrics:
    """Counters, hit rate and latency percentiles from Redis, plus the index size and the
    wrong-hit estimates (of `tenant` only, unless None)."""
    if service.breaker.is_open:  # fail fast: Redis is known to be away
        raise CacheUnavailable(
            f"metrics live in Redis, which is bypassed ({service.breaker.reason})"
        )
    counters, histograms = await (await flushed(service)).read()
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
        entries=await service.cache.store.count(),
        price_source=PRICE_SOURCE,
        wrong_hits=[] if service.audit is None else await service.audit.estimates(tenant),
    )


async def prometheus_state(service: QueryService) -> State:
    """The gauges GET /metrics reads at scrape time: entries, Redis and the breakers, the
    wrong-hit estimates. Redis calls only while the breaker is closed."""
    breaker = service.breaker
    embed_breaker = service.embed_breaker
    entries: int | None = None
    wrong: dict[tuple[str, str], tuple[float, float]] = {}
    redis_up = False
    if not breaker.is_open:
        try:
            entries = await breaker.call(
                service.cache.store.count, budget=service.cache.write_timeout, what="count"
            )
            redis_up = True
            if service.audit is not None:
                for row in await service.audit.estimates(None):
                    if row.rate is not None and row.high is not None:
                        wrong[(row.tenant, row.model_id)] = (row.rate, row.high)
        except CacheUnavailable as exc:
            log.warning("metrics scrape without Redis: %s", exc.message)
    verifier = service.judge.mode
    return State(
        entries=entries,
        redis_up=redis_up,
        cache_breaker_open=breaker.is_open,
        embedder_breaker_open=embed_breaker is not None and embed_breaker.is_open,
        info={"version": VERSION, "embedder": service.embedder.id, "verifier": verifier},
        wrong_hits=wrong,
        wrong_hit_budget=service.planner.max_wrong_hit_rate,
    )
