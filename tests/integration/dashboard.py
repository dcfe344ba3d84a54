"""The dashboard in a real browser: Debian's Chromium through playwright, a page that records
what it loads and logs, and the checks that compare what it shows with the routes' answers."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Request, sync_playwright

from tests.containers import engine
from tests.integration.conftest import SentinelProcess
from tests.integration.servers import wait_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# What the tests ask: a miss, its exact repeat, a paraphrase, and a near miss the guard refuses
# (tests/integration/test_guard.py).
QUESTION = "How can I stop being so hard on myself?"
PARAPHRASE = "How do I stop being so hard on myself?"
STORED = "When was Albert Einstein born?"
NEAR_MISS = "Where was Albert Einstein born?"

# The routes of issue 14 the page reads besides /v1/metrics, and its section for each.
NEW_ROUTES = {
    "/v1/metrics/layers": "layers",
    "/v1/metrics/history": "history",
    "/v1/metrics/near-misses": "near-misses",
    "/v1/metrics/top-entries": "top-entries",
}
# The /v1/metrics counters the page shows as they are (GET /v1/metrics names them so).
COUNTS = [
    "requests",
    "exact_hits",
    "semantic_hits",
    "misses",
    "errors",
    "upstream_calls",
    "upstream_errors",
    "entries",
    "tokens_saved",
]


@contextmanager
def chromium() -> Iterator[Browser]:
    """Debian's Chromium, headless; skips without it (fails in CI, which must run these).

    Playwright's sync API runs its own event loop in this thread while the browser is open:
    async tests cannot run in between, so the dashboard's tests are all sync.
    """
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing (apt-get install chromium)"
        if engine.in_ci():
            pytest.fail(f"{message}, and CI must run the dashboard tests", pytrace=False)
        pytest.skip(f"{message}; the dashboard's browser tests need it (CI would fail here)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


class Visit:
    """A page of its own, with every request it made and every error it logged."""

    def __init__(self, browser: Browser) -> None:
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})
        self.page: Page = self.context.new_page()
        self.requests: list[Request] = []
        self.errors: list[str] = []
        # A lambda: playwright cannot wrap a builtin method such as list.append.
        self.page.on("request", lambda request: self.requests.append(request))  # noqa: PLW0108
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"{message.text} ({message.location.get('url')})")

    def open(self, url: str, state: str = "ready") -> None:
        self.page.goto(url)
        self.wait_for(state)

    def wait_for(self, state: str) -> None:
        """Until <body data-state> is `state` (the page sets it once every call answered)."""
        self.page.wait_for_selector(f'body[data-state="{state}"]', timeout=15_000)

    def metrics(self) -> dict[str, list[tuple[str, str]]]:
        """Every data-metric element on the page: name -> [(data-value, shown text)]."""
        found: list[list[str]] = self.page.eval_on_selector_all(
            "[data-metric]",
            "els => els.map(e => [e.dataset.metric, e.dataset.value ?? e.dataset.text,"
            " e.textContent])",
        )
        shown: dict[str, list[tuple[str, str]]] = {}
        for name, value, text in found:
            shown.setdefault(name, []).append((value, text))
        return shown

    def section_state(self, name: str) -> str | None:
        return self.page.get_attribute(f'section[data-section="{name}"]', "data-state")

    def close(self) -> None:
        self.context.close()

    def errors_besides(self, base_url: str, statuses: set[int]) -> list[str]:
        """The console errors left once Chromium's notes of answers a test expects are removed
        ("Failed to load resource: ... status of 404" for a route this Sentinel does not have,
        401 before the key is given)."""
        allowed = tuple(
            f"Failed to load resource: the server responded with a status of {status} "
            for status in statuses
        )
        return [
            error
            for error in self.errors
            if not (error.startswith(allowed) and f"({base_url}/v1/metrics" in error)
        ]

    def assert_only(self, base_url: str) -> None:
        """Every request the page made went to the Sentinel that served it."""
        elsewhere = [r.url for r in self.requests if not r.url.startswith(f"{base_url}/")]
        assert elsewhere == []
        assert any(r.url.startswith(f"{base_url}/v1/metrics") for r in self.requests)


def number(text: str) -> float:
    """A number as the page writes it ("1,234", "66.7%", "$0.0000201", "0.35 ms") in the
    unit the JSON uses (a percentage as a fraction)."""
    value = float(re.sub(r"[^0-9.eE+-]", "", text.replace(",", "")))
    return value / 100 if text.endswith("%") else value


def assert_shown(shown: list[tuple[str, str]], expected: list[Any], name: str) -> None:
    """The page's values of one data-metric are the route's, exactly, and so is their text
    (to the precision the page writes)."""
    assert [None if value == "" else float(value) for value, _ in shown] == expected, name
    for (_, text), value in zip(shown, expected, strict=True):
        if value is None:
            assert text == "–", name
        else:
            assert number(text) == pytest.approx(value, rel=0.01, abs=0.006), (name, text)


def check_metrics(visit: Visit, body: dict[str, Any]) -> None:
    """The page shows GET /v1/metrics' counters, hit rate, savings and latency summaries."""
    shown = visit.metrics()
    for name in [*COUNTS, "hit_rate", "usd_saved", "usd_spent"]:
        assert_shown(shown[name], [body[name]], name)
    for outcome, summary in body["latency_ms"].items():
        for field in ("count", "p50", "p95"):
            name = f"latency.{outcome}.{field}"
            assert_shown(shown[name], [summary[field]], name)


def check_route(visit: Visit, response: httpx.Response, section: str) -> None:
    """The section shows what the route answered, or "not available" when it answers 404."""
    text = visit.page.inner_text(f'section[data-section="{section}"]')
    if response.status_code == 404:
        assert visit.section_state(section) == "unavailable"
        assert "not available" in text
        return
    assert response.status_code == 200, response.text
    assert visit.section_state(section) == "ready", text
    body, shown = response.json(), visit.metrics()

    def column(name: str, rows: list[dict[str, Any]], field: str) -> None:
        assert_shown(shown.get(name, []), [row[field] for row in rows], name)

    def texts(name: str) -> list[str]:
        return [value for value, _ in shown.get(name, [])]

    if section == "layers":
        for layer, summary in body["latency_ms"].items():
            for field in ("count", "p50", "p95"):
                name = f"layers.{layer}.{field}"
                assert_shown(shown[name], [summary[field]], name)
    elif section == "history":
        buckets = body["buckets"]
        assert_shown(shown["history.buckets"], [len(buckets)], "history.buckets")
        for name in ("requests", "exact_hits", "semantic_hits", "misses", "cost_per_1000_usd"):
            column(f"history.{name}", buckets, name)
        totals = [bucket["hit_rate"]["total"] for bucket in buckets]
        assert_shown(shown.get("history.hit_rate", []), totals, "history.hit_rate")
    elif section == "near-misses":
        rows = body["near_misses"]
        assert_shown(shown["near_misses.count"], [len(rows)], "near_misses.count")
        for name in ("similarity", "guard_score", "verifier_score"):
            column(f"near_miss.{name}", rows, name)
        for name in ("prompt", "nearest_prompt"):
            assert texts(f"near_miss.{name}") == [row[name] for row in rows]
    elif section == "top-entries":
        rows = body["entries"]
        assert_shown(shown["top_entries.count"], [len(rows)], "top_entries.count")
        column("top_entry.hits", rows, "hits")
        assert texts("top_entry.prompt") == [row["prompt"] for row in rows]
        # The page read the TTLs a moment before the test's GET: as long or a little longer.
        for value, row in zip(texts("top_entry.ttl"), rows, strict=True):
            assert 0 <= int(value) - row["ttl"] <= 30


def ask(sentinel: SentinelProcess, prompt: str, headers: dict[str, str] | None = None) -> str:
    """POST /v1/query; the layer that answered."""
    response = httpx.post(
        f"{sentinel.base_url}/v1/query", json={"prompt": prompt}, headers=headers, timeout=10.0
    )
    assert response.status_code == 200, response.text
    match: str = response.json()["match"]
    return match


def send_traffic(sentinel: SentinelProcess, headers: dict[str, str] | None = None) -> None:
    """A miss, an exact hit, a paraphrase served by the semantic layer, a guard rejection."""
    assert ask(sentinel, QUESTION, headers) == "miss"
    assert ask(sentinel, QUESTION, headers) == "exact"
    assert ask(sentinel, PARAPHRASE, headers) == "semantic"
    assert ask(sentinel, STORED, headers) == "miss"
    assert ask(sentinel, NEAR_MISS, headers) == "miss"
    # Hits reach the top-entries ranking within the hit counter's second: wait for it, so the
    # page and the route read the same ranking.
    wait_for(
        lambda: (
            httpx.get(f"{sentinel.base_url}/v1/metrics/top-entries", headers=headers, timeout=10.0)
            .json()
            .get("entries")
        ),
        "the hits in the top-entries ranking",
    )


def route_answers(
    base_url: str, params: dict[str, str], headers: dict[str, str] | None = None
) -> dict[str, httpx.Response]:
    return {
        route: httpx.get(f"{base_url}{route}", params=params, headers=headers, timeout=10.0)
        for route in NEW_ROUTES
    }
