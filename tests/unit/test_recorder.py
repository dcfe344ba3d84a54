"""The Recorder: counts in process, one batch per flush, nothing lost on a failed flush,
bounded labels, Prometheus outcomes apart from /v1/metrics' four."""

from __future__ import annotations

from typing import cast

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.cache.metrics import Batch, MetricsStore, bucket_of
from app.errors import CacheUnavailable
from app.observability.prometheus import State, exposition
from app.observability.recorder import NearMiss, Recorder

T0 = 1_764_000_000.0  # a Monday, 16:00 UTC: an hour and a day boundary apart
HOUR = int(T0) - int(T0) % 3600
DAY = int(T0) - int(T0) % 86400


class Store:
    """MetricsStore.add, keeping the batches; fails while `down`."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.down = False

    async def add(self, batch: Batch) -> None:
        if self.down:
            raise CacheUnavailable("Redis failed: ConnectionError")
        self.batches.append(batch)


def recorder(store: Store, now: list[float], **kwargs: int) -> Recorder:
    return Recorder(cast(MetricsStore, store), clock=lambda: now[0], **kwargs)


async def test_a_flush_writes_what_was_counted_in_one_batch() -> None:
    store, now = Store(), [T0]
    metrics = recorder(store, now)
    metrics.record("miss", tenant="a", model="m", latency_ms=200.0, upstream_called=True,
                   usd_spent=0.002, tokens_spent=30)  # fmt: skip
    metrics.record("exact", tenant="a", model="m", latency_ms=1.0, tokens_saved=30,
                   usd_saved=0.002)  # fmt: skip
    now[0] += 3600  # the next hour, the same day
    metrics.record("semantic", tenant="b", model="m", latency_ms=9.0)
    assert store.batches == []  # nothing leaves the process until a flush
    await metrics.flush()
    (batch,) = store.batches
    assert batch.totals["requests"] == 3
    assert (batch.totals["exact_hits"], batch.totals["semantic_hits"]) == (1, 1)
    assert batch.totals["misses"] == 1
    assert batch.totals["upstream_calls"] == 1
    assert batch.totals["usd_spent"] == pytest.approx(0.002)
    assert batch.latency[("miss", bucket_of(200.0))] == 1
    first, second = batch.history[("hour", HOUR)], batch.history[("hour", HOUR + 3600)]
    assert first["a\tm\trequests"] == 2
    assert first["a\tm\tmiss"] == 1
    assert first["a\tm\tlatency_ms"] == pytest.approx(201.0)
    assert first["a\tm\tusd_saved"] == pytest.approx(0.002)
    assert second["b\tm\tsemantic"] == 1
    day = batch.history[("day", DAY)]
    assert day["a\tm\trequests"] + day["b\tm\trequests"] == 3
    await metrics.flush()  # nothing new: nothing written
    assert len(store.batches) == 1


async def test_a_failed_flush_keeps_its_counts_for_the_next() -> None:
    store, now = Store(), [T0]
    metrics = recorder(store, now)
    metrics.record("exact", tenant="", model="m", latency_ms=1.0)
    store.down = True
    with pytest.raises(CacheUnavailable):
        await metrics.flush()
    metrics.record("exact", tenant="", model="m", latency_ms=1.0)
    store.down = False
    await metrics.flush()
    (batch,) = store.batches
    assert batch.totals["exact_hits"] == 2
    assert batch.history[("hour", HOUR)]["\tm\texact"] == 2


async def test_past_the_tenant_cap_the_rest_count_as_other() -> None:
    store, now = Store(), [T0]
    metrics = recorder(store, now, max_tenants=2)
    for tenant in ("a", "b", "c", "d", "a"):
        metrics.record("miss", tenant=tenant, model="m", latency_ms=1.0)
    await metrics.flush()
    hour = store.batches[0].history[("hour", HOUR)]
    assert hour["a\tm\trequests"] == 2
    assert hour["b\tm\trequests"] == 1
    assert hour["other\tm\trequests"] == 2
    assert not any(name.startswith(("c\t", "d\t")) for name in hour)


def test_prometheus_tells_bypass_and_negative_hits_apart() -> None:
    metrics = recorder(Store(), [T0])
    metrics.record("miss", tenant="", model="m", latency_ms=1.0, bypass=True)
    metrics.record("miss", tenant="", model="m", latency_ms=1.0)
    metrics.record("error", tenant="", model="m", latency_ms=1.0, negative_hit=True)
    metrics.upstream("groq", "429", 0.5)
    metrics.judged(
        served=False,
        similarity=0.91,
        guard_score=0.2,
        near_miss=NearMiss(
            at="2025-11-24T16:00:00Z",
            tenant="",
            model="m",
            prompt="q",
            nearest_prompt="p",
            nearest_entry_id="e",
            similarity=0.91,
            guard_score=0.2,
            verifier_score=None,
            stage="guard",
        ),
    )
    metrics.judged(served=True, similarity=0.95, guard_score=0.9, near_miss=None,
                   verifier_score=0.985)  # fmt: skip
    state = State(entries=5, redis_up=True, cache_breaker_open=False,
                  embedder_breaker_open=True, info={"version": "x"},
                  wrong_hits={("a", "m"): (0.01, 0.05)}, wrong_hit_budget=0.02)  # fmt: skip
    text = exposition(metrics.prometheus, state).decode()
    page = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    outcome = "sentinel_requests_total"
    assert page[(outcome, (("model", "m"), ("outcome", "bypass"), ("tenant", "-")))] == 1
    assert page[(outcome, (("model", "m"), ("outcome", "miss"), ("tenant", "-")))] == 1
    assert page[(outcome, (("model", "m"), ("outcome", "negative_hit"), ("tenant", "-")))] == 1
    assert (
        page[("sentinel_upstream_failures_total", (("provider", "groq"), ("status", "429")))] == 1
    )
    assert page[("sentinel_layer_duration_seconds_count", (("layer", "provider"),))] == 1
    assert page[("sentinel_cache_entries", ())] == 5
    assert page[("sentinel_embedder_breaker_open", ())] == 1
    assert page[("sentinel_wrong_hit_rate_upper", (("model", "m"), ("tenant", "a")))] == 0.05
    assert page[("sentinel_wrong_hit_budget", ())] == 0.02
    assert (
        page[("sentinel_near_misses_total", (("model", "m"), ("stage", "guard"), ("tenant", "-")))]
        == 1
    )
    # Only the candidate the verifier read is counted there, in its decision's series.
    assert page[("sentinel_verifier_score_count", (("decision", "served"),))] == 1
    assert ("sentinel_verifier_score_count", (("decision", "rejected"),)) not in page
    assert page[("sentinel_guard_score_count", (("decision", "served"),))] == 1
    assert page[("sentinel_verifier_score_bucket", (("decision", "served"), ("le", "0.98")))] == 0
    assert page[("sentinel_verifier_score_bucket", (("decision", "served"), ("le", "0.99")))] == 1


def test_prometheus_counts_tokens_and_dollars_per_tenant_and_model() -> None:
    metrics = recorder(Store(), [T0])
    for _ in range(2):
        metrics.record("exact", tenant="a", model="m", latency_ms=1.0, tokens_saved=30,
                       usd_saved=0.25)  # fmt: skip
    metrics.record("miss", tenant="", model="m", latency_ms=9.0, upstream_called=True,
                   tokens_spent=10, usd_spent=0.5)  # fmt: skip
    state = State(entries=0, redis_up=True, cache_breaker_open=False,
                  embedder_breaker_open=False, info={})  # fmt: skip
    text = exposition(metrics.prometheus, state).decode()
    page = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    a, untenanted = (("model", "m"), ("tenant", "a")), (("model", "m"), ("tenant", "-"))
    assert page[("sentinel_tokens_saved_total", a)] == 60
    assert page[("sentinel_saved_usd_total", a)] == 0.5
    assert page[("sentinel_tokens_spent_total", untenanted)] == 10
    assert page[("sentinel_spent_usd_total", untenanted)] == 0.5
    # A counter nothing was added to has no series for that tenant and model.
    assert ("sentinel_tokens_spent_total", a) not in page
    assert ("sentinel_tokens_saved_total", untenanted) not in page
