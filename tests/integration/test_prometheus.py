"""The real Prometheus scraping a real Sentinel: the shipped scrape job (with the admin key as a
bearer token from a file when keys are on) and rules, against known traffic.

A miss then three exact hits must come out of PromQL as a hit ratio of 0.75, cumulative and as
a rate once there are scrapes on both sides of new traffic; every alert rule evaluates without
error and none fires on a healthy instance; every dashboard query is accepted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.api import bearer
from tests.integration.conftest import SentinelProcess
from tests.integration.prometheus import (
    PrometheusServer,
    alert_expressions,
    as_promql,
    dashboard_expressions,
    require_binary,
    scrape_config,
)

pytestmark = pytest.mark.integration

ADMIN = "admin-prometheus-4e8a1c7b2d9f3a6e5b0c"
KEY = "sk-test-prometheus-team-a-8c2e4a6f1b3d5e7a"
HITS = 'sum(sentinel_requests_total{outcome=~"exact|semantic"})'
REQUESTS = "sum(sentinel_requests_total)"
HIT_RATIO = f"{HITS} / {REQUESTS}"
RATE_HIT_RATIO = (
    'sum(rate(sentinel_requests_total{outcome=~"exact|semantic"}[1m]))'
    " / sum(rate(sentinel_requests_total[1m]))"
)


@pytest.fixture
def start_prometheus(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], PrometheusServer]]:
    """Start Prometheus servers with the given config, ready; all are stopped afterwards.
    Skips (fails in CI) before the test starts anything when `prometheus` is missing."""
    require_binary("prometheus")
    started: list[PrometheusServer] = []

    def start(config: dict[str, Any]) -> PrometheusServer:
        server = PrometheusServer(config, tmp_path / f"prometheus-{len(started)}")
        started.append(server)
        server.wait_ready()
        return server

    yield start
    for server in started:
        server.stop()


def one_miss_three_hits(sentinel: SentinelProcess, prompt: str, headers: dict[str, str]) -> None:
    """Ask `prompt` four times: a miss, then three exact hits."""
    matches = []
    for _ in range(4):
        answer = httpx.post(
            f"{sentinel.base_url}/v1/query", json={"prompt": prompt}, headers=headers, timeout=10
        )
        assert answer.status_code == 200, answer.text
        matches.append(answer.json()["match"])
    assert matches == ["miss", "exact", "exact", "exact"]


def assert_scraped_hit_ratios(
    prometheus: PrometheusServer, send_batch: Callable[[str], None], tenant: str
) -> None:
    """With one batch (a miss, three exact hits) sent before Prometheus started: the target is
    up, the cumulative hit ratio is 0.75; after a second batch the 1-minute rate ratio is too."""
    prometheus.wait_target_up()
    assert prometheus.poll(lambda: prometheus.scalar(REQUESTS) == 4, "4 requests scraped")
    assert prometheus.scalar(HIT_RATIO) == pytest.approx(0.75)
    by_tenant = prometheus.query("sum by (tenant) (sentinel_requests_total)")
    assert [series["metric"] for series in by_tenant] == [{"tenant": tenant}]

    # Scrapes before and after new traffic: rate() sees 1 miss and 3 hits more.
    send_batch("A second question, asked four times")
    prometheus.poll(lambda: prometheus.scalar(REQUESTS) == 8, "8 requests scraped")
    assert prometheus.scalar(HIT_RATIO) == pytest.approx(0.75)
    assert prometheus.scalar(RATE_HIT_RATIO) == pytest.approx(0.75)


def assert_rules_and_dashboard_evaluate(prometheus: PrometheusServer) -> None:
    """Every rule of alerts.yml evaluated with health ok (PromQL that parses can still fail at
    evaluation, e.g. many-to-many matching), no alert pending or firing, every dashboard query
    answered."""

    def evaluated() -> list[dict[str, Any]] | None:
        rules = [rule for group in prometheus.api("rules")["groups"] for rule in group["rules"]]
        return rules if all(rule["health"] != "unknown" for rule in rules) else None

    rules = prometheus.poll(evaluated, "every rule evaluated once")
    assert {rule["name"] for rule in rules} == {name for name, _ in alert_expressions()}
    failed = {rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"}
    assert not failed, failed
    alerts = prometheus.api("alerts")["alerts"]
    assert alerts == [], alerts
    for where, expr in dashboard_expressions():
        data = prometheus.api("query", query=as_promql(expr))  # asserts status "success"
        assert data["resultType"] == "vector", where
    # The dashboard's first panel, over the two batches: a quarter misses, three quarters hits.
    ratio = prometheus.query(as_promql(dict(dashboard_expressions())["Hit ratio by outcome A"]))
    shares = {series["metric"]["outcome"]: float(series["value"][1]) for series in ratio}
    assert shares == pytest.approx({"miss": 0.25, "exact": 0.75})


def test_prometheus_scrapes_an_open_sentinel(
    start_prometheus: Callable[[dict[str, Any]], PrometheusServer],
    start_on: Callable[..., SentinelProcess],
    redis_url: str,
) -> None:
    sentinel = start_on(redis_url)
    sentinel.wait_ready()
    one_miss_three_hits(sentinel, "What is the boiling point of water at sea level?", {})

    prometheus = start_prometheus(scrape_config(f"127.0.0.1:{sentinel.port}"))
    assert_scraped_hit_ratios(prometheus, lambda q: one_miss_three_hits(sentinel, q, {}), "-")
    assert_rules_and_dashboard_evaluate(prometheus)


def test_prometheus_scrapes_with_the_admin_key_from_a_credentials_file(
    start_prometheus: Callable[[dict[str, Any]], PrometheusServer],
    start_on: Callable[..., SentinelProcess],
    redis_url: str,
    tmp_path: Path,
) -> None:
    sentinel = start_on(
        redis_url,
        SENTINEL_API_KEYS=f"{KEY}=team-a",
        SENTINEL_ADMIN_KEY=ADMIN,
        MAX_WRONG_HIT_RATE="0.1",
    )
    sentinel.wait_ready()
    # Without the admin key /metrics is refused: the target is up below thanks to the file.
    assert httpx.get(f"{sentinel.base_url}/metrics", timeout=10).status_code == 401
    tenant_key = httpx.get(f"{sentinel.base_url}/metrics", headers=bearer(KEY), timeout=10)
    assert tenant_key.status_code in {401, 403}, tenant_key.text
    one_miss_three_hits(sentinel, "What is the boiling point of water at sea level?", bearer(KEY))

    # As infra/observability/README.md says: the key alone in a file only its owner reads.
    key_file = tmp_path / "sentinel-admin-key"
    key_file.write_text(ADMIN)
    key_file.chmod(0o600)
    prometheus = start_prometheus(
        scrape_config(f"127.0.0.1:{sentinel.port}", credentials_file=key_file)
    )
    assert_scraped_hit_ratios(
        prometheus, lambda q: one_miss_three_hits(sentinel, q, bearer(KEY)), "team-a"
    )
    assert prometheus.scalar("max(sentinel_wrong_hit_budget)") == pytest.approx(0.1)
    assert_rules_and_dashboard_evaluate(prometheus)
