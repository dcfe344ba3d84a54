"""GET /dashboard in a real headless Chromium, against a real Sentinel process (issue 14).

The page must show what the metrics routes answer, load nothing from any other host, log no
error, and ask for the admin key when the routes want one. A route this Sentinel does not have
(404) must read "not available": each check compares the page with a GET of the same route,
so it holds before and after the routes of issue 14 exist. One test answers those routes in
the browser with the contract's shapes, so their drawing is tested either way.

Chromium is Debian's (/usr/bin/chromium, driven through playwright's executable_path; no
browser is downloaded). Without it the browser tests skip, or fail when `CI` is set.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Route

from app.api.dashboard import ASSETS, CONTENT_SECURITY_POLICY
from tests.integration.api import bearer
from tests.integration.conftest import ROOT, SentinelProcess
from tests.integration.dashboard import (
    NEAR_MISS,
    NEW_ROUTES,
    STORED,
    Visit,
    check_metrics,
    check_route,
    chromium,
    route_answers,
    send_traffic,
)

pytestmark = pytest.mark.integration

SCREENSHOT = ROOT / "var" / "dashboard.png"
ADMIN = "admin-dashboard-5e1f0a9b7c3d2e4f"
TENANT_KEY = "tenant-dashboard-8a2b4c6d0e1f3a5b"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def visit(browser: Browser) -> Iterator[Callable[[], Visit]]:
    """`visit()`: a fresh page (own context, so own sessionStorage), closed afterwards."""
    opened: list[Visit] = []

    def open_page() -> Visit:
        opened.append(Visit(browser))
        return opened[-1]

    yield open_page
    for page in opened:
        page.close()


@pytest.fixture
def sentinel(start_on: Callable[..., SentinelProcess], redis_url: str) -> SentinelProcess:
    process = start_on(redis_url)
    process.wait_ready()
    return process


def test_the_page_shows_what_the_metrics_routes_answer(
    sentinel: SentinelProcess, visit: Callable[[], Visit]
) -> None:
    send_traffic(sentinel)
    page = visit()
    page.open(f"{sentinel.base_url}/dashboard")

    metrics = httpx.get(f"{sentinel.base_url}/v1/metrics", timeout=10.0).json()
    assert (metrics["requests"], metrics["exact_hits"], metrics["semantic_hits"]) == (5, 1, 1)
    assert metrics["misses"] == 3
    assert metrics["usd_saved"] > 0
    check_metrics(page, metrics)
    answers = route_answers(sentinel.base_url, {"bucket": "hour"})
    for route, section in NEW_ROUTES.items():
        check_route(page, answers[route], section)
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.page.screenshot(path=str(SCREENSHOT), full_page=True)

    # Daily buckets: the history is asked again, and shows that route's answer.
    page.page.select_option("#bucket", "day")
    page.page.wait_for_url("**/dashboard?bucket=day")
    page.wait_for("ready")
    day = route_answers(sentinel.base_url, {"bucket": "day"})["/v1/metrics/history"]
    check_route(page, day, "history")
    assert any("bucket=day" in r.url for r in page.requests)

    page.assert_only(sentinel.base_url)
    missing = {answer.status_code for answer in answers.values()} & {404}
    assert page.errors_besides(sentinel.base_url, missing) == []


def test_the_tenant_selector_scopes_every_call(
    sentinel: SentinelProcess, visit: Callable[[], Visit]
) -> None:
    page = visit()
    page.open(f"{sentinel.base_url}/dashboard")
    before = len(page.requests)
    page.page.fill("#tenant", "acme")
    page.page.click("#scope button[type=submit]")
    page.page.wait_for_url("**/dashboard?tenant=acme")
    page.wait_for("ready")
    calls = [r.url for r in page.requests[before:] if "/v1/metrics" in r.url]
    assert len(calls) == 1 + len(NEW_ROUTES)
    assert all("tenant=acme" in url for url in calls), calls
    # A reload (or a shared link) keeps the tenant.
    page.page.reload()
    page.wait_for("ready")
    assert page.page.input_value("#tenant") == "acme"


def test_with_keys_on_the_page_asks_for_the_admin_key(
    start_on: Callable[..., SentinelProcess], redis_url: str, visit: Callable[[], Visit]
) -> None:
    sentinel = start_on(redis_url, SENTINEL_ADMIN_KEY=ADMIN, SENTINEL_API_KEYS=f"{TENANT_KEY}=acme")
    sentinel.wait_ready()
    send_traffic(sentinel, bearer(TENANT_KEY))
    page = visit()
    page.open(f"{sentinel.base_url}/dashboard", state="needs-key")
    assert page.page.is_visible("#key-form")
    assert page.section_state("totals") == "needs-key"
    assert "requests" not in page.metrics()

    page.page.fill("#key", "not-the-key")
    page.page.click("#key-form button[type=submit]")
    page.page.wait_for_selector("#key-message:has-text('refused')")
    page.wait_for("needs-key")

    page.page.fill("#key", ADMIN)
    page.page.click("#key-form button[type=submit]")
    as_admin = httpx.get(f"{sentinel.base_url}/v1/metrics", headers=bearer(ADMIN), timeout=10.0)
    key = ADMIN
    if as_admin.status_code == 401:
        # Before issue 14's routes, /v1/metrics takes a tenant's key only: the admin key is
        # refused like any wrong key, and a tenant's key shows that tenant's numbers.
        page.page.wait_for_selector("#key-message:has-text('refused')")
        page.wait_for("needs-key")
        page.page.fill("#key", TENANT_KEY)
        page.page.click("#key-form button[type=submit]")
        key = TENANT_KEY
    page.wait_for("ready")
    assert page.page.is_hidden("#key-form")
    check_metrics(page, httpx.get(f"{sentinel.base_url}/v1/metrics", headers=bearer(key)).json())
    assert page.metrics()["requests"][0][0] == "5"
    assert page.page.evaluate("sessionStorage.getItem('sentinel.dashboard.key')") == key
    sent = [r for r in page.requests if "/v1/metrics" in r.url and r.headers.get("authorization")]
    assert sent[-1].headers["authorization"] == f"Bearer {key}"

    # The key outlives a reload of the tab, and "Forget key" drops it.
    page.page.reload()
    page.wait_for("ready")
    page.page.click("#forget-key")
    page.wait_for("needs-key")
    assert page.page.evaluate("sessionStorage.getItem('sentinel.dashboard.key')") is None

    page.assert_only(sentinel.base_url)
    assert page.errors_besides(sentinel.base_url, {401, 403, 404}) == []


# The contract's shapes (notes of issue 14), answered inside the browser.
HOSTILE = '<img src="/x" id="injected"> and </td><script>alert(1)</script>'
CONTRACT: dict[str, dict[str, Any]] = {
    "layers": {
        "latency_ms": {
            "exact_lookup": {"count": 5, "p50": 0.31, "p95": 0.92},
            "embed": {"count": 4, "p50": 6.4, "p95": 9.8},
            "knn": {"count": 4, "p50": 1.1, "p95": 2.05},
            "judge": {"count": 3, "p50": 0.02, "p95": 0.04},
            "provider": {"count": 3, "p50": 410.0, "p95": 1210.0},
            "store": {"count": 0, "p50": None, "p95": None},
        }
    },
    "history": {
        "bucket": "hour",
        "tenant": None,
        "model": None,
        "buckets": [
            {
                "start": f"2026-12-03T{hour:02d}:00:00Z",
                "requests": 10 + hour,
                "exact_hits": hour % 4,
                "semantic_hits": 2,
                "misses": 8 + hour - hour % 4,
                "errors": 0,
                "hit_rate": {
                    "exact": round((hour % 4) / (10 + hour), 4),
                    "semantic": round(2 / (10 + hour), 4),
                    "total": round((hour % 4 + 2) / (10 + hour), 4),
                },
                "avg_latency_ms": 120.5,
                "p95_latency_ms": 410.0 if hour != 9 else None,
                "cost_per_1000_usd": 0.0123 * (hour % 3 + 1),
                "spent_usd": 0.000148,
                "saved_usd": 0.000061,
                "tokens_saved": 410,
            }
            for hour in range(6, 12)
        ],
    },
    "near-misses": {
        "near_misses": [
            {
                "at": "2026-12-03T08:01:02Z",
                "tenant": "acme",
                "model": "groq/llama-3.1-8b-instant",
                "prompt": NEAR_MISS,
                "nearest_prompt": STORED,
                "nearest_entry_id": "e1",
                "similarity": 0.912,
                "guard_score": 0.31,
                "verifier_score": None,
                "stage": "guard",
            },
            {
                "at": "2026-12-03T07:59:00Z",
                "tenant": "",
                "model": "groq/llama-3.1-8b-instant",
                "prompt": HOSTILE,
                "nearest_prompt": "x" * 400,
                "nearest_entry_id": "e2",
                "similarity": 0.874,
                "guard_score": 0.85,
                "verifier_score": 0.12,
                "stage": "verifier",
            },
        ]
    },
    "top-entries": {
        "entries": [
            {"id": "e1", "tenant": "acme", "model": "m", "prompt": STORED, "hits": 12, "ttl": 3400},
            {"id": "e2", "tenant": "", "model": "m", "prompt": HOSTILE, "hits": 3, "ttl": 120},
        ]
    },
}


def test_the_page_draws_the_contract_of_the_new_routes(
    sentinel: SentinelProcess, visit: Callable[[], Visit]
) -> None:
    page = visit()
    served = re.compile(r"/v1/metrics/(layers|history|near-misses|top-entries)(\?|$)")

    def answer(route: Route) -> None:
        match = served.search(route.request.url)
        assert match is not None
        route.fulfill(status=200, json=CONTRACT[match.group(1)])

    page.page.route(served, answer)
    page.open(f"{sentinel.base_url}/dashboard")
    for section, body in CONTRACT.items():
        check_route(page, httpx.Response(200, json=body), section)
    history = page.page.locator('section[data-section="history"]')
    assert history.locator("svg.chart polyline").count() == 4  # total, exact, semantic; cost
    assert history.locator("svg.chart circle").count() == 4 * 6
    assert page.page.locator('section[data-section="layers"] svg rect').count() == 2 * 6
    # Prompts are text: markup in one is shown, never parsed.
    assert page.page.locator("#injected").count() == 0
    assert HOSTILE in page.page.inner_text('section[data-section="top-entries"]')
    options = page.page.eval_on_selector_all("#tenants option", "os => os.map(o => o.value)")
    assert options == ["acme"]
    page.page.screenshot(path=str(SCREENSHOT.with_name("dashboard-contract.png")), full_page=True)
    page.assert_only(sentinel.base_url)
    assert page.errors == []


def test_the_page_is_static_same_origin_and_needs_no_key(
    start_on: Callable[..., SentinelProcess], redis_url: str
) -> None:
    sentinel = start_on(redis_url, SENTINEL_ADMIN_KEY=ADMIN)
    sentinel.wait_ready()
    with httpx.Client(base_url=sentinel.base_url, timeout=10.0) as http:
        assert http.get("/v1/metrics").status_code == 401
        page = http.get("/dashboard")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert "default-src 'self'" in CONTENT_SECURITY_POLICY
        for asset, media_type in ASSETS.items():
            served = http.get(f"/dashboard/{asset}")
            assert served.status_code == 200, asset
            assert served.headers["content-type"].split(";")[0] == media_type
            # No other host: the only absolute URL any file holds is SVG's namespace name.
            urls = set(re.findall(r"https?://[^\s\"'`)]+", served.text))
            assert urls <= {"http://www.w3.org/2000/svg"}, (asset, urls)
        assert http.get("/dashboard/index.html").status_code == 404
        assert http.get("/dashboard/..%2Fapp%2Fmain.py").status_code == 404
        assert "/dashboard" not in http.get("/schema/openapi.json").json()["paths"]
