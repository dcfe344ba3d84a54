"""infra/observability: promtool accepts the config and the rules, the alerts fire as their unit
tests say, the dashboard's queries parse, and every metric they name is one /metrics exposes."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml  # type: ignore[import-untyped]  # no types-PyYAML in the lock

from app.settings import Settings
from tests.fakes.openai_server import FakeOpenAI, Fault
from tests.integration.conftest import app_client
from tests.integration.prometheus import (
    GRAFANA_VARIABLES,
    OBSERVABILITY,
    PROMETHEUS_SERIES,
    alert_expressions,
    as_promql,
    dashboard,
    dashboard_expressions,
    dashboard_panels,
    exposed_names,
    metric_names,
    promtool,
)

pytestmark = pytest.mark.integration

# From test_guard.py: the guard refuses the near miss and serves the paraphrase.
STORED = "When was Albert Einstein born?"
NEAR_MISS = "Where was Albert Einstein born?"
PARAPHRASE = "When was Albert Einstein born exactly?"


def test_metric_names_are_read_from_promql_as_prometheus_would() -> None:
    expr = """
        sum by (tenant) (rate(sentinel_requests_total{outcome=~"exact|semantic", x="a_b"}[1h]
          offset 1d)) / ignoring (outcome) group_left
        max without (instance) (sentinel_x_bucket) > on () group_left max (sentinel_budget)
        and up{job="sentinel"} == 0
        or histogram_quantile(0.95, sum by (le) (rate(h_bucket[$__rate_interval])))
    """
    assert metric_names(expr) == {
        "sentinel_requests_total",
        "sentinel_x_bucket",
        "sentinel_budget",
        "up",
        "h_bucket",
    }
    exposition = (
        "# TYPE a_total counter\na_total 1\n# TYPE h histogram\n"
        '# TYPE g gauge\ng 1\n# TYPE l_total counter\nl_total{x="1"} 2\n'
    )
    assert exposed_names(exposition) == {"a_total", "h_bucket", "h_sum", "h_count", "g", "l_total"}


def test_promtool_accepts_the_config_and_its_rule_files() -> None:
    checked = promtool("check", "config", "prometheus.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "alerts.yml" in checked.stdout


def test_promtool_accepts_the_rules_and_every_alert_fires_as_its_unit_test_says() -> None:
    checked = promtool("check", "rules", "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", "alerts.test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    # Each alert has a case of its own in the unit tests.
    cases = yaml.safe_load((OBSERVABILITY / "alerts.test.yml").read_text())
    tested_alerts = {
        case["alertname"]
        for test in cases["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert tested_alerts == {name for name, _ in alert_expressions()}


def test_the_dashboard_is_an_importable_grafana_dashboard(tmp_path: Path) -> None:
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41
    assert board["uid"]
    assert board["title"]
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    tenant = variables["tenant"]
    assert tenant["type"] == "query"
    assert tenant["includeAll"]
    assert tenant["allValue"] == ".*"
    used = {
        variable for _, expr in dashboard_expressions() for variable in re.findall(r"\$\w+", expr)
    }
    assert used <= set(GRAFANA_VARIABLES), used - set(GRAFANA_VARIABLES)
    assert "$tenant" in used
    for panel in dashboard_panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert refs, panel["title"]
        assert len(refs) == len(set(refs)), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]

    # promtool parses every query, written as recording rules.
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{n}", "expr": as_promql(expr)}
                    for n, (_, expr) in enumerate(dashboard_expressions())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    checked = promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr


async def test_every_metric_the_alerts_and_the_dashboard_name_is_one_sentinel_exposes(
    make_settings: Callable[..., Settings], fake_llm: FakeOpenAI
) -> None:
    # Traffic that gives every labelled family a series (a multiprocess exposition lists only
    # families with samples): a miss, an exact and a semantic hit, a near miss, feedback, and an
    # upstream failure; MAX_WRONG_HIT_RATE exposes the budget.
    async with app_client(make_settings(verifier="off", max_wrong_hit_rate=0.1)) as http:
        assert (await http.post("/v1/query", json={"prompt": STORED})).json()["match"] == "miss"
        assert (await http.post("/v1/query", json={"prompt": STORED})).json()["match"] == "exact"
        served = (await http.post("/v1/query", json={"prompt": PARAPHRASE})).json()
        assert served["match"] == "semantic", served
        assert (await http.post("/v1/query", json={"prompt": NEAR_MISS})).json()["match"] == "miss"
        judged = await http.post(
            "/v1/feedback",
            json={"entry_id": served["entry_id"], "prompt": PARAPHRASE, "correct": False},
        )
        assert judged.status_code == 200, judged.text
        fake_llm.script([Fault.status(503)] * 10)
        failed = await http.post("/v1/query", json={"prompt": "A question the provider fails"})
        assert failed.status_code >= 500, failed.text
        fake_llm.reset()
        metrics = await http.get("/metrics")
    assert metrics.status_code == 200, metrics.text
    assert metrics.headers["content-type"].startswith("text/plain")
    exposed = exposed_names(metrics.text)
    assert any(name.startswith("sentinel_") for name in exposed), metrics.text[:2000]

    unknown: dict[str, set[str]] = {}
    for where, expr in [*alert_expressions(), *dashboard_expressions()]:
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        if missing := names - exposed - PROMETHEUS_SERIES:
            unknown[where] = missing
    assert not unknown, f"named but not exposed by /metrics: {unknown}\nexposed: {sorted(exposed)}"
