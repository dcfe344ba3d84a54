"""The Prometheus metric families, and GET /metrics' text.

Counters and histograms are updated in process as requests end (microseconds, no I/O). With
PROMETHEUS_MULTIPROC_DIR set (uvicorn workers), prometheus-client keeps them in memory-mapped
files there and the exposition adds every worker's up. Gauges that describe shared state (the
entries in Redis, the breakers, the wrong-hit estimate) are read when Prometheus scrapes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds: a Redis lookup is ~0.2 ms, an embedding a few ms, a provider call seconds.
_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
_SIMILARITY_BUCKETS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.88, 0.9, 0.92, 0.94, 0.96, 0.98, 1.0)
_SCORE_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
# The verifier's thresholds lie near the top (0.976 by default).
_VERIFIER_BUCKETS = (0.1, 0.5, 0.9, 0.95, 0.97, 0.976, 0.98, 0.99, 0.995, 1.0)


class PrometheusMetrics:
    """Sentinel's counters and histograms, on a registry of their own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        tm = ("tenant", "model")
        self.requests = Counter(
            "sentinel_requests", "Requests by outcome", ("outcome", *tm), registry=r
        )
        self.request_seconds = Histogram(
            "sentinel_request_duration_seconds",
            "Whole-request latency by outcome",
            ("outcome",),
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.layer_seconds = Histogram(
            "sentinel_layer_duration_seconds",
            "Time in each layer: exact_lookup, alias, embed, knn, judge, provider, store",
            ("layer",),
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream = Counter(
            "sentinel_upstream_requests",
            "Provider calls by provider and status (HTTP status, or timeout/connection/...)",
            ("provider", "status"),
            registry=r,
        )
        self.upstream_failures = Counter(
            "sentinel_upstream_failures",
            "Failed provider calls",
            ("provider", "status"),
            registry=r,
        )
        self.upstream_seconds = Histogram(
            "sentinel_upstream_duration_seconds",
            "Provider call latency (retries included)",
            ("provider",),
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens_saved = Counter(
            "sentinel_tokens_saved", "Tokens answered from the cache", tm, registry=r
        )
        self.tokens_spent = Counter(
            "sentinel_tokens_spent", "Tokens the provider was paid for", tm, registry=r
        )
        self.usd_saved = Counter(
            "sentinel_saved_usd", "Provider cost avoided by hits (USD)", tm, registry=r
        )
        self.usd_spent = Counter(
            "sentinel_spent_usd", "Provider cost of misses (USD)", tm, registry=r
        )
        self.near_misses = Counter(
            "sentinel_near_misses",
            "Requests whose nearest candidate above the cosine floor was refused, by stage",
            (*tm, "stage"),
            registry=r,
        )
        self.similarity = Histogram(
            "sentinel_semantic_similarity",
            "Cosine similarity of judged candidates: served hits and refused near misses",
            ("decision",),
            buckets=_SIMILARITY_BUCKETS,
            registry=r,
        )
        self.guard_score = Histogram(
            "sentinel_guard_score",
            "The guard's probability for judged candidates",
            ("decision",),
            buckets=_SCORE_BUCKETS,
            registry=r,
        )
        self.verifier_score = Histogram(
            "sentinel_verifier_score",
            "Guard x verifier score of the candidates the verifier read (count: its runs)",
            ("decision",),
            buckets=_VERIFIER_BUCKETS,
            registry=r,
        )


@dataclass(frozen=True, slots=True)
class State:
    """Gauges read at scrape time (shared state, not counted per request)."""

    entries: int | None
    redis_up: bool
    cache_breaker_open: bool
    embedder_breaker_open: bool
    info: dict[str, str]
    # (tenant, model) -> (estimate, 95% upper bound)
    wrong_hits: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)
    wrong_hit_budget: float | None = None


class _StateCollector(Collector):
    def __init__(self, state: State) -> None:
        self._state = state

    def collect(self):  # type: ignore[no-untyped-def]
        s = self._state
        if s.entries is not None:
            yield GaugeMetricFamily("sentinel_cache_entries", "Entries in the cache", s.entries)
        yield GaugeMetricFamily("sentinel_redis_up", "1 while Redis answers", int(s.redis_up))
        yield GaugeMetricFamily(
            "sentinel_cache_breaker_open",
            "1 while the cache is bypassed (Redis failing)",
            int(s.cache_breaker_open),
        )
        yield GaugeMetricFamily(
            "sentinel_embedder_breaker_open",
            "1 while the semantic layer is skipped (embedder failing)",
            int(s.embedder_breaker_open),
        )
        info = GaugeMetricFamily("sentinel_info", "Sentinel's build", labels=list(s.info))
        info.add_metric(list(s.info.values()), 1)
        yield info
        rate = GaugeMetricFamily(
            "sentinel_wrong_hit_rate",
            "Estimated share of semantic hits that were wrong (live verification)",
            labels=["tenant", "model"],
        )
        upper = GaugeMetricFamily(
            "sentinel_wrong_hit_rate_upper",
            "Upper end of the wrong-hit rate's 95% interval",
            labels=["tenant", "model"],
        )
        for (tenant, model), (estimate, high) in s.wrong_hits.items():
            rate.add_metric([tenant or "-", model], estimate)
            upper.add_metric([tenant or "-", model], high)
        yield rate
        yield upper
        if s.wrong_hit_budget is not None:
            yield GaugeMetricFamily(
                "sentinel_wrong_hit_budget", "MAX_WRONG_HIT_RATE", s.wrong_hit_budget
            )


def exposition(metrics: PrometheusMetrics, state: State) -> bytes:
    """The text Prometheus scrapes: every worker's counters (when multiprocess) and the state."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        counted = CollectorRegistry()
        MultiProcessCollector(counted)  # type: ignore[no-untyped-call]
    else:
        counted = metrics.registry
    shared = CollectorRegistry()
    shared.register(_StateCollector(state))
    return generate_latest(counted) + generate_latest(shared)
