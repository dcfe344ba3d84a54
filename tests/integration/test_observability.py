"""Issue 14: Prometheus /metrics, metrics off the request path, history, near misses, top
entries, and who may read them. In process on the test Redis; workers in real processes."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as redis_sync
from prometheus_client.parser import text_string_to_metric_families

from app.cache.keys import METRICS_KEY
from app.settings import Settings
from tests.fakes.openai_server import FakeOpenAI, Fault
from tests.integration.conftest import SentinelProcess, app_client

pytestmark = pytest.mark.integration

MODEL = "groq/llama-3.1-8b-instant"
QUESTION = "How can I get better at public speaking?"
PARAPHRASE = "How do I get better at public speaking?"
# A changed year: the near-miss checks refuse it although the cosine is high.
NEAR_MISS = "Which team won the football league in 2011?"
NEAR_MISS_CACHED = "Which team won the football league in 2012?"
KEYS = "sk-team-a=team-a,sk-team-b=team-b"
ADMIN = "admin-secret-key"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text page: (name, sorted labels) -> value."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(page: dict[Any, float], name: str, **labels: str) -> float:
    return page.get((name, tuple(sorted(labels.items()))), 0.0)


def total(page: dict[Any, float], name: str, **labels: str) -> float:
    """The sum over every sample of `name` whose labels include `labels`."""
    return sum(
        v
        for (n, have), v in page.items()
        if n == name and all((k, w) in have for k, w in labels.items())
    )


async def ask(http: httpx.AsyncClient, prompt: str, key: str | None = None) -> httpx.Response:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    return await http.post("/v1/query", json={"prompt": prompt}, headers=headers)


async def test_prometheus_counts_each_outcome_layer_and_provider_call(
    make_settings: Callable[..., Settings], fake_llm: FakeOpenAI
) -> None:
    async with app_client(make_settings()) as http:
        assert (await ask(http, QUESTION)).json()["match"] == "miss"
        assert (await ask(http, QUESTION)).json()["match"] == "exact"
        assert (await ask(http, PARAPHRASE)).json()["match"] == "semantic"
        assert (await ask(http, NEAR_MISS_CACHED)).json()["match"] == "miss"
        assert (await ask(http, NEAR_MISS)).json()["match"] == "miss"  # refused near miss
        fake_llm.script([Fault.status(503)] * 3)
        failed = await ask(http, "What is the tallest mountain in Africa?")
        assert failed.status_code == 502
        again = await ask(http, "What is the tallest mountain in Africa?")
        assert again.headers["x-sentinel-cache"] == "NEGATIVE-HIT"

        response = await http.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        page = samples(response.text)

    requests = "sentinel_requests_total"
    assert value(page, requests, outcome="miss", tenant="-", model=MODEL) == 3
    assert value(page, requests, outcome="exact", tenant="-", model=MODEL) == 1
    assert value(page, requests, outcome="semantic", tenant="-", model=MODEL) == 1
    assert value(page, requests, outcome="error", tenant="-", model=MODEL) == 1
    assert value(page, requests, outcome="negative_hit", tenant="-", model=MODEL) == 1
    assert value(page, "sentinel_request_duration_seconds_count", outcome="exact") == 1
    for layer in ("exact_lookup", "embed", "knn", "judge", "provider", "store"):
        assert value(page, "sentinel_layer_duration_seconds_count", layer=layer) >= 1, layer
    assert value(page, "sentinel_upstream_requests_total", provider="groq", status="200") == 3
    assert value(page, "sentinel_upstream_requests_total", provider="groq", status="503") == 1
    assert value(page, "sentinel_upstream_failures_total", provider="groq", status="503") == 1
    assert value(page, "sentinel_upstream_duration_seconds_count", provider="groq") == 4
    # The near miss: refused (by the guard or the year check), its similarity counted.
    refused_by = {
        dict(labels)["stage"]: v
        for (name, labels), v in page.items()
        if name == "sentinel_near_misses_total"
    }
    assert sum(refused_by.values()) == 1
    assert set(refused_by) <= {"guard", "number"}
    assert value(page, "sentinel_semantic_similarity_count", decision="served") == 1
    assert value(page, "sentinel_semantic_similarity_count", decision="rejected") == 1
    assert value(page, "sentinel_guard_score_count", decision="rejected") == 1
    assert value(page, "sentinel_tokens_saved_total", tenant="-", model=MODEL) > 0
    assert value(page, "sentinel_saved_usd_total", tenant="-", model=MODEL) > 0
    assert value(page, "sentinel_spent_usd_total", tenant="-", model=MODEL) > 0
    assert value(page, "sentinel_cache_entries") == 3
    assert value(page, "sentinel_redis_up") == 1
    assert value(page, "sentinel_cache_breaker_open") == 0
    assert value(page, "sentinel_embedder_breaker_open") == 0
    assert total(page, "sentinel_info") == 1


async def test_requests_are_counted_without_a_redis_call_and_flushed_in_the_background(
    make_settings: Callable[..., Settings], redis_url: str
) -> None:
    direct = redis_sync.Redis.from_url(redis_url)
    settings = make_settings(metrics_flush_interval_ms=60_000)
    async with app_client(settings) as http:
        await ask(http, QUESTION)
        for _ in range(5):
            assert (await ask(http, QUESTION)).json()["match"] == "exact"
        # Nothing written yet: the counts wait in process for the next flush...
        assert direct.hget(METRICS_KEY, "requests") is None
        # ...and a read of /v1/metrics flushes this process's counts first.
        metrics = (await http.get("/v1/metrics")).json()
        assert metrics["requests"] == 6
        assert metrics["exact_hits"] == 5
        assert int(direct.hget(METRICS_KEY, "exact_hits") or 0) == 5
        await ask(http, QUESTION)
    # Shutdown writes what is still pending.
    assert int(direct.hget(METRICS_KEY, "exact_hits") or 0) == 6

    async with app_client(make_settings(metrics_flush_interval_ms=100)) as http:
        await ask(http, QUESTION)
        deadline = time.monotonic() + 5
        while int(direct.hget(METRICS_KEY, "exact_hits") or 0) < 7:
            assert time.monotonic() < deadline, "the background flush never wrote"
            time.sleep(0.05)


async def test_history_gives_the_seed_table_per_hour_and_day_by_tenant(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(sentinel_api_keys=KEYS, sentinel_admin_key=ADMIN)
    async with app_client(settings) as http:
        await ask(http, QUESTION, "sk-team-a")
        await ask(http, QUESTION, "sk-team-a")
        await ask(http, QUESTION, "sk-team-a")
        await ask(http, QUESTION, "sk-team-b")
        admin = {"Authorization": f"Bearer {ADMIN}"}

        everyone = await http.get("/v1/metrics/history?bucket=hour", headers=admin)
        assert everyone.status_code == 200, everyone.text
        body = everyone.json()
        assert body["bucket"] == "hour"
        (bucket,) = body["buckets"]
        assert bucket["requests"] == 4
        assert bucket["exact_hits"] == 2
        assert bucket["misses"] == 2
        assert bucket["hit_rate"] == {"exact": 0.5, "semantic": 0.0, "total": 0.5}
        assert bucket["spent_usd"] > 0
        assert bucket["cost_per_1000_usd"] == pytest.approx(bucket["spent_usd"] / 4 * 1000)
        assert bucket["saved_usd"] > 0
        assert bucket["avg_latency_ms"] > 0
        assert bucket["p95_latency_ms"] is not None
        hour = time.strftime("%Y-%m-%dT%H:00:00Z", time.gmtime())
        assert bucket["start"] == hour

        team_a = await http.get("/v1/metrics/history?bucket=day&tenant=team-a", headers=admin)
        (day,) = team_a.json()["buckets"]
        assert day["start"] == time.strftime("%Y-%m-%dT00:00:00Z", time.gmtime())
        assert (day["requests"], day["exact_hits"]) == (3, 2)
        assert day["hit_rate"]["total"] == pytest.approx(0.6667)

        # A tenant's key reads its own tenant whatever it asks for.
        own = await http.get(
            "/v1/metrics/history?tenant=team-a", headers={"Authorization": "Bearer sk-team-b"}
        )
        assert own.status_code == 200
        assert [b["requests"] for b in own.json()["buckets"]] == [1]

        by_model = await http.get(f"/v1/metrics/history?model={MODEL}", headers=admin)
        assert by_model.json()["buckets"][0]["requests"] == 4
        other_model = await http.get("/v1/metrics/history?model=groq/other-model", headers=admin)
        assert other_model.json()["buckets"] == []

        past = await http.get("/v1/metrics/history?until=2020-01-01T00:00:00Z", headers=admin)
        assert past.status_code == 200
        assert past.json()["buckets"] == []
        for bad in ("bucket=week", "since=yesterday", "limit=0"):
            url = (
                "/v1/metrics/history?" + bad
                if "limit" not in bad
                else "/v1/metrics/near-misses?" + bad
            )
            response = await http.get(url, headers=admin)
            assert response.status_code == 400, (bad, response.text)
            assert set(response.json()["error"]) >= {"code", "message"}


async def test_near_misses_and_top_entries_for_the_dashboard(
    make_settings: Callable[..., Settings],
) -> None:
    async with app_client(make_settings()) as http:
        await ask(http, NEAR_MISS_CACHED)
        assert (await ask(http, NEAR_MISS)).json()["match"] == "miss"
        await ask(http, QUESTION)
        for _ in range(3):
            await ask(http, QUESTION)
        await ask(http, NEAR_MISS_CACHED)

        near = (await http.get("/v1/metrics/near-misses")).json()["near_misses"]
        assert len(near) == 1
        (refused,) = near
        assert "2011" in refused["prompt"]
        assert "2012" in refused["nearest_prompt"]
        assert refused["stage"] in {"guard", "number"}
        assert refused["similarity"] >= 0.8
        assert refused["model"] == MODEL
        assert refused["at"].endswith("Z")

        deadline = time.monotonic() + 5  # hits reach Redis within the hit counter's second
        while True:
            top = (await http.get("/v1/metrics/top-entries?limit=2")).json()["entries"]
            if [entry["hits"] for entry in top] == [3, 1]:
                break
            assert time.monotonic() < deadline, top
            time.sleep(0.1)
        assert "public speaking" in top[0]["prompt"]
        assert "2012" in top[1]["prompt"]

        layers = (await http.get("/v1/metrics/layers")).json()["latency_ms"]
        assert layers["exact_lookup"]["count"] >= 4
        assert layers["embed"]["p50"] > 0


async def test_who_may_read_metrics(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(sentinel_api_keys=KEYS, sentinel_admin_key=ADMIN)
    async with app_client(settings) as http:
        await ask(http, QUESTION, "sk-team-a")
        assert (await http.get("/metrics")).status_code == 401
        tenant = await http.get("/metrics", headers={"Authorization": "Bearer sk-team-a"})
        assert tenant.status_code == 401
        admin = await http.get("/metrics", headers={"Authorization": f"Bearer {ADMIN}"})
        assert admin.status_code == 200
        assert 'tenant="team-a"' in admin.text
        for route in ("/v1/metrics", "/v1/metrics/near-misses", "/v1/metrics/top-entries"):
            assert (await http.get(route)).status_code == 401, route
            for key in ("sk-team-a", ADMIN):
                answer = await http.get(route, headers={"Authorization": f"Bearer {key}"})
                assert answer.status_code == 200, (route, answer.text)
    # Without an admin key, /metrics has no reader while keys are on.
    async with app_client(make_settings(sentinel_api_keys=KEYS)) as http:
        assert (await http.get("/metrics")).status_code == 403


def test_workers_add_up_in_one_exposition(
    start_on: Callable[..., SentinelProcess], redis_url: str, tmp_path: Path
) -> None:
    shared = tmp_path / "prometheus"
    shared.mkdir()
    workers = [start_on(redis_url, PROMETHEUS_MULTIPROC_DIR=str(shared)) for _ in range(2)]
    for worker in workers:
        worker.wait_ready()
    httpx.post(f"{workers[0].base_url}/v1/query", json={"prompt": QUESTION}, timeout=10)
    for worker in workers:
        for _ in range(2):
            hit = httpx.post(f"{worker.base_url}/v1/query", json={"prompt": QUESTION}, timeout=10)
            assert hit.json()["match"] == "exact"
    for worker in workers:  # either worker's page holds both workers' counts
        page = samples(httpx.get(f"{worker.base_url}/metrics", timeout=10).text)
        assert value(page, "sentinel_requests_total", outcome="exact", tenant="-", model=MODEL) == 4
        assert value(page, "sentinel_requests_total", outcome="miss", tenant="-", model=MODEL) == 1
