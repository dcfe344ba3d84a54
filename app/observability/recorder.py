"""Request metrics counted in process and flushed to Redis in the background.

A request's bookkeeping is a few dict updates and Prometheus increments (microseconds, no I/O):
no Redis round trip on its path. Every `interval` a background task writes what was counted
since the last flush in one pipeline (totals, latency histograms, the hour's and the day's
history, near misses), so every instance adds to the same totals and history. A failed flush
keeps its counts for the next one; while the cache is bypassed nothing is tried. Counts not
yet flushed when the process dies are lost (at most `interval` of them).

Labels stay bounded: a tenant is a key's tenant (created by an admin), a model one the router
knows; past `max_tenants` distinct tenants (per process) the rest are counted as "other".
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Literal, Unpack

import msgspec
import prometheus_client

from app.cache.flushing import PeriodicFlush
from app.cache.metrics import (
    COUNTER_OF,
    HISTORY_SECONDS,
    Batch,
    Counts,
    MetricsStore,
    Outcome,
    bucket_of,
)
from app.errors import CacheUnavailable
from app.observability.prometheus import PrometheusMetrics

# "alias": the lookup of a repeated paraphrase served through its alias, without an embedding
# (cache/aliases.py); those lookups are not also counted as exact_lookup.
Layer = Literal["exact_lookup", "alias", "embed", "knn", "judge", "provider", "store"]
LAYERS: tuple[Layer, ...] = (
    "exact_lookup", "alias", "embed", "knn", "judge", "provider", "store",
)  # fmt: skip
OTHER = "other"
# The amounts the hour's and day's history keeps besides requests, outcomes and latency.
HISTORY_AMOUNTS = frozenset({"tokens_saved", "usd_saved", "usd_spent"})


class NearMiss(msgspec.Struct, frozen=True, kw_only=True):
    """A candidate above the cosine floor that was refused, beside the question it was for."""

    at: str  # ISO 8601, UTC, to the second
    tenant: str
    model: str
    prompt: str
    nearest_prompt: str
    nearest_entry_id: str
    similarity: float
    guard_score: float | None
    verifier_score: float | None
    stage: str


_encode = msgspec.json.Encoder().encode


def iso_utc(epoch: float) -> str:
    """`2026-12-03T08:01:02Z` for epoch seconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


class Recorder(PeriodicFlush):
    """Counts requests, layers, provider calls and judged candidates; flushes them to Redis."""

    def __init__(
        self,
        store: MetricsStore,
        *,
        interval: float = 1.0,
        max_tenants: int = 100,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(interval=interval, what="metrics")
        self.store = store
        self.prometheus = PrometheusMetrics()
        self._max_tenants = max_tenants
        self._tenants: set[str] = set()
        self._clock = clock
        self._pending = Batch()
        # This process's layer latencies (ms buckets), for /v1/metrics/layers.
        self.layers: dict[Layer, Counter[int]] = {layer: Counter() for layer in LAYERS}
        self._lock = asyncio.Lock()
        # Prometheus children per label set, looked up once: `labels()` validates and locks on
        # every call (five per request). Bounded like the labels (tenants are capped).
        self._request_children: dict[
            tuple[str, str, str], tuple[prometheus_client.Counter, prometheus_client.Histogram]
        ] = {}
        self._layer_children: dict[Layer, prometheus_client.Histogram] = {}
        # The token and dollar counters' children per (counter, tenant, model).
        self._money_children: dict[tuple[str, str, str], prometheus_client.Counter] = {}
        # History field names per (tenant, model, outcome, latency bucket): bounded likewise.
        self._fields: dict[tuple[str, str, str, int], tuple[str, str, str, str, str]] = {}

    @property
    def pending(self) -> bool:
        """Whether counts wait to be written."""
        return bool(self._pending)

    def tenant_label(self, tenant: str) -> str:
        """The tenant as counted: itself, or "other" past the cap."""
        if tenant in self._tenants:
            return tenant
        if len(self._tenants) >= self._max_tenants:
            return OTHER
        self._tenants.add(tenant)
        return tenant

    def record(
        self,
        outcome: Outcome,
        *,
        tenant: str,
        model: str,
        latency_ms: float,
        **counts: Unpack[Counts],
    ) -> None:
        """Count one finished request (`outcome` as /v1/metrics counts it)."""
        tenant = self.tenant_label(tenant)
        label = _label_of(outcome, counts)
        shown = tenant or "-"
        children = self._request_children.get((label, shown, model))
        if children is None:
            prom = self.prometheus
            children = (
                prom.requests.labels(label, shown, model),
                prom.request_seconds.labels(label),
            )
            self._request_children[(label, shown, model)] = children
        children[0].inc()
        children[1].observe(latency_ms / 1000)
        batch = self._pending
        totals = batch.totals
        totals["requests"] += 1
        totals[COUNTER_OF[outcome]] += 1
        bucket_ms = bucket_of(latency_ms)
        batch.latency[(outcome, bucket_ms)] += 1
        amounts = self._amounts(counts, shown, model) if counts else ()
        for name, amount in amounts:
            totals[name] += amount
        fields = self._fields.get((tenant, model, outcome, bucket_ms))
        if fields is None:
            prefix = f"{tenant}\t{model}\t"
            fields = self._fields[(tenant, model, outcome, bucket_ms)] = (
                prefix + "requests",
                prefix + outcome,
                prefix + "latency_ms",
                prefix + f"lat.{bucket_ms}",
                prefix,
            )
        requests, counted, latency, bucketed, prefix = fields
        now = int(self._clock())
        for bucket, seconds in HISTORY_SECONDS.items():
            start = now - now % seconds
            history = batch.history.get((bucket, start))
            if history is None:
                history = batch.history[(bucket, start)] = defaultdict(float)
            history[requests] += 1
            history[counted] += 1
            history[latency] += latency_ms
            history[bucketed] += 1
            for name, amount in amounts:
                if name in HISTORY_AMOUNTS:
                    history[prefix + name] += amount

    def _amounts(self, counts: Counts, shown: str, model: str) -> list[tuple[str, float]]:
        """The request's non-zero amounts (calls, tokens, dollars) by their totals' names;
        the Prometheus token and dollar counters counted."""
        amounts: list[tuple[str, float]] = []
        if counts.get("upstream_called", False):
            amounts.append(("upstream_calls", 1))
        if counts.get("upstream_failed", False):
            amounts.append(("upstream_errors", 1))
        tokens_saved = counts.get("tokens_saved", 0)
        tokens_spent = counts.get("tokens_spent", 0)
        usd_saved = counts.get("usd_saved", 0.0)
        usd_spent = counts.get("usd_spent", 0.0)
        for name, amount in (
            ("tokens_saved", tokens_saved),
            ("tokens_spent", tokens_spent),
            ("usd_saved", usd_saved),
            ("usd_spent", usd_spent),
        ):
            if amount:
                amounts.append((name, amount))
        if tokens_saved:
            self._money("tokens_saved", shown, model).inc(tokens_saved)
            self._money("usd_saved", shown, model).inc(usd_saved)
        if tokens_spent or usd_spent:
            self._money("tokens_spent", shown, model).inc(tokens_spent)
            self._money("usd_spent", shown, model).inc(usd_spent)
        return amounts

    def _money(self, name: str, shown: str, model: str) -> prometheus_client.Counter:
        """The Prometheus counter `name` (tokens_saved, usd_spent, ...) of a tenant and model."""
        child = self._money_children.get((name, shown, model))
        if child is None:
            metric: prometheus_client.Counter = getattr(self.prometheus, name)
            child = self._money_children[(name, shown, model)] = metric.labels(shown, model)
        return child

    def layer(self, layer: Layer, seconds: float) -> None:
        """Time spent in one layer of one request."""
        child = self._layer_children.get(layer)
        if child is None:
            child = self._layer_children[layer] = self.prometheus.layer_seconds.labels(layer)
        child.observe(seconds)
        self.layers[layer][bucket_of(seconds * 1000)] += 1

    def upstream(self, provider: str, status: str, seconds: float) -> None:
        """One call to a provider (its retries included) and how it ended."""
        prom = self.prometheus
        prom.upstream.labels(provider, status).inc()
        prom.upstream_seconds.labels(provider).observe(seconds)
        if not status.startswith("2"):
            prom.upstream_failures.labels(provider, status).inc()
        self.layer("provider", seconds)

    def judged(
        self,
        *,
        served: bool,
        similarity: float,
        guard_score: float | None,
        near_miss: NearMiss | None,
        verifier_score: float | None = None,
    ) -> None:
        """A candidate the judge decided on; a refused one is kept as a near miss."""
        decision = "served" if served else "rejected"
        prom = self.prometheus
        prom.similarity.labels(decision).observe(similarity)
        if guard_score is not None:
            prom.guard_score.labels(decision).observe(guard_score)
        if verifier_score is not None:
            prom.verifier_score.labels(decision).observe(verifier_score)
        if near_miss is not None:
            tenant = self.tenant_label(near_miss.tenant)
            prom.near_misses.labels(tenant or "-", near_miss.model, near_miss.stage).inc()
            self._pending.near_misses.insert(0, _encode(near_miss))

    async def flush(self) -> None:
        """Write what was counted since the last flush; on failure keep it for the next."""
        async with self._lock:
            if not self._pending:
                return
            batch, self._pending = self._pending, Batch()
            try:
                await self.store.add(batch)
            except CacheUnavailable:
                batch.absorb(self._pending)
                self._pending = batch
                raise


def _label_of(outcome: Outcome, counts: Counts) -> str:
    """Prometheus' outcome: /v1/metrics' four, with bypassed misses and negative hits apart."""
    if outcome == "miss" and counts.get("bypass"):
        return "bypass"
    if outcome == "error" and counts.get("negative_hit"):
        return "negative_hit"
    return outcome
