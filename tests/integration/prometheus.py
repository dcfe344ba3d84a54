"""The shipped Prometheus and Grafana files (infra/observability), the metric names they use,
and the real `prometheus` and `promtool` binaries (Debian's packages; .ci/run installs them)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml  # type: ignore[import-untyped]  # no types-PyYAML in the lock
from prometheus_client.parser import text_string_to_metric_families

from tests.containers import engine
from tests.integration.servers import free_port

OBSERVABILITY = Path(__file__).resolve().parents[2] / "infra" / "observability"
# Series Prometheus makes itself, which the alerts may use besides Sentinel's.
PROMETHEUS_SERIES = frozenset({"up"})
# Grafana's variables, as a query inspector would send them with "All" tenants.
GRAFANA_VARIABLES = {"$tenant": ".*", "$__rate_interval": "1m", "$__range": "5m"}

# The sample names each metric type writes in the text format.
_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
}
# What is not a metric name in PromQL: strings, label matchers, grouping label lists, range
# and subquery brackets, Grafana variables; keywords; a name followed by "(" is a function.
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^}]*\}")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_BRACKETS = re.compile(r"\[[^\]]*\]")
_GRAFANA = re.compile(r"\$\{[^}]*\}|\$\w+")
_NAMES = re.compile(r"(?<![\w:.])[a-zA-Z_:][\w:]*\b(?!\s*\()")
_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
    | {"and", "or", "unless", "inf", "nan"}
)


def metric_names(expr: str) -> set[str]:
    """The metric (sample) names a PromQL expression selects."""
    for pattern in (_STRINGS, _MATCHERS, _GRAFANA, _BRACKETS, _GROUPING):
        expr = pattern.sub(" ", expr)
    return {name for name in _NAMES.findall(expr) if name.lower() not in _KEYWORDS}


def exposed_names(exposition: str) -> set[str]:
    """Every sample name a /metrics text allows: each family's name with its type's suffixes
    (`_total` for a counter, `_bucket`/`_sum`/`_count` for a histogram), and the samples seen."""
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def alert_expressions() -> list[tuple[str, str]]:
    """(alert name, expression) for every rule in alerts.yml."""
    rules = yaml.safe_load((OBSERVABILITY / "alerts.yml").read_text())
    return [
        (rule.get("alert") or rule["record"], rule["expr"])
        for group in rules["groups"]
        for rule in group["rules"]
    ]


def dashboard() -> dict[str, Any]:
    """grafana-dashboard.json, parsed."""
    parsed: dict[str, Any] = json.loads((OBSERVABILITY / "grafana-dashboard.json").read_text())
    return parsed


def dashboard_panels() -> Iterator[dict[str, Any]]:
    """Every panel of the dashboard, those inside rows included (rows themselves not)."""
    for panel in dashboard()["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def dashboard_expressions() -> list[tuple[str, str]]:
    """(panel title and refId, expression) for every query of the dashboard."""
    return [
        (f"{panel['title']} {target['refId']}", target["expr"])
        for panel in dashboard_panels()
        for target in panel.get("targets", [])
    ]


def as_promql(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced, as Grafana sends it."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def require_binary(name: str) -> str:
    """The path of a Prometheus binary; without it, skip (a laptop) or fail (CI)."""
    path = shutil.which(name)
    if path is None:
        message = f"`{name}` is not installed (Debian: apt-get install prometheus)"
        if engine.in_ci():
            pytest.fail(f"{message}; CI must run this test (.ci/run installs it)", pytrace=False)
        pytest.skip(message)
    return path


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Run promtool from infra/observability (where relative rule paths resolve)."""
    return subprocess.run(
        [require_binary("promtool"), *args],
        cwd=OBSERVABILITY,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def scrape_config(
    target: str, *, interval: str = "1s", credentials_file: Path | None = None
) -> dict[str, Any]:
    """prometheus.yml's `sentinel` job and rule files, scraping `target` every `interval`
    (rules evaluated as often), with the admin key as a bearer token from a file if given."""
    shipped = yaml.safe_load((OBSERVABILITY / "prometheus.yml").read_text())
    job = next(job for job in shipped["scrape_configs"] if job["job_name"] == "sentinel")
    job = {**job, "static_configs": [{"targets": [target]}]}
    if credentials_file is not None:
        job["authorization"] = {"type": "Bearer", "credentials_file": str(credentials_file)}
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(OBSERVABILITY / name) for name in shipped["rule_files"]],
        "scrape_configs": [job],
    }


class PrometheusServer:
    """The real `prometheus` on 127.0.0.1, its config and storage in a directory of the test's."""

    def __init__(self, config: dict[str, Any], directory: Path) -> None:
        binary = require_binary("prometheus")
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        config_path = directory / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_path = directory / "prometheus.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Block until /-/ready answers 200, or fail with the log."""

        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"prometheus exited early:\n{self.logs()}")
            try:
                return httpx.get(f"{self.base_url}/-/ready", timeout=1.0).status_code == 200
            except httpx.HTTPError:
                return False

        self.poll(ready, "prometheus ready", timeout)

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>: the `data` of a successful answer."""
        answer = httpx.get(f"{self.base_url}/api/v1/{path}", params=params, timeout=10.0)
        body = answer.json()
        assert body["status"] == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's vector (the API's `result`)."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def scalar(self, expr: str) -> float | None:
        """The value of a query answering one series, None while it answers none."""
        result = self.query(expr)
        if not result:
            return None
        assert len(result) == 1, result
        return float(result[0]["value"][1])

    def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets, with `health` and `lastError`."""
        active: list[dict[str, Any]] = self.api("targets", state="active")["activeTargets"]
        return active

    def wait_target_up(self, timeout: float = 20.0) -> dict[str, Any]:
        """The one scrape target, once a scrape succeeded; else fail with its last error."""
        seen: list[dict[str, Any]] = []

        def up() -> dict[str, Any] | None:
            seen[:] = self.targets()  # empty until service discovery ran
            assert len(seen) <= 1, seen
            if seen and "HTTP status 4" in seen[0]["lastError"]:  # 401, 404: no retry mends it
                raise AssertionError(f"scrape refused: {seen[0]['lastError']}")
            return seen[0] if seen and seen[0]["health"] == "up" else None

        try:
            target: dict[str, Any] = self.poll(up, "the target up", timeout)
        except AssertionError as failed:
            raise AssertionError(f"{failed}\nlast seen: {seen}") from None
        return target

    def poll(self, check: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
        """`check()` until it is truthy; fail with the log after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not (value := check()):
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {timeout} s: {what}\n{self.logs()[-4000:]}")
            time.sleep(0.2)
        return value

    def stop(self) -> None:
        """SIGTERM and wait (SIGKILL after 10 s)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def logs(self) -> str:
        """What Prometheus logged so far."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")
