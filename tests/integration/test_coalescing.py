"""Request coalescing across two Sentinel processes sharing one Redis: one provider call."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.fakes.openai_server import FakeOpenAI, Fault
from tests.integration.conftest import SentinelProcess

pytestmark = pytest.mark.integration

QUESTION = "What is the half-life of carbon-14?"


@pytest.fixture
def two_sentinels(
    start_on: Callable[..., SentinelProcess], redis_url: str
) -> list[SentinelProcess]:
    settings = {
        "UPSTREAM_TIMEOUT": "10",
        # 50 requests at once on a 2-core machine: lookups may take longer than the default
        # 50 ms budget, and a bypassed lookup is (rightly) not coalesced.
        "CACHE_LOOKUP_TIMEOUT_MS": "2000",
    }
    processes = [start_on(redis_url, **settings), start_on(redis_url, **settings)]
    for process in processes:
        process.wait_ready()
    return processes


@pytest.fixture
def slow_provider(fake_llm: FakeOpenAI) -> Iterator[FakeOpenAI]:
    fake_llm.delay = 1.0  # long enough for every request to arrive while the first is in flight
    yield fake_llm
    fake_llm.delay = 0.0


async def burst(sentinels: list[SentinelProcess], n: int) -> list[httpx.Response]:
    """n identical requests at once, spread over the instances."""
    async with httpx.AsyncClient(timeout=30) as http:
        return await asyncio.gather(
            *(
                http.post(
                    f"{sentinels[i % len(sentinels)].base_url}/v1/query", json={"prompt": QUESTION}
                )
                for i in range(n)
            )
        )


async def test_fifty_identical_requests_through_two_instances_make_one_call(
    two_sentinels: list[SentinelProcess], slow_provider: FakeOpenAI
) -> None:
    responses = await burst(two_sentinels, 50)
    assert [r.status_code for r in responses] == [200] * 50
    bodies = [r.json() for r in responses]
    assert {b["response"] for b in bodies} == {f"answer to: {QUESTION}"}
    assert slow_provider.call_count == 1
    assert sum(b["match"] == "miss" for b in bodies) == 1
    # Those that arrived while the first was in flight waited for it; any that arrived after
    # its answer was stored are plain exact hits (how many is the machine's speed, not a rule).
    waited = [r for r in responses if r.headers.get("x-sentinel-waited") == "true"]
    assert waited
    assert all(b["match"] in ("miss", "exact") for b in bodies)


async def test_a_failing_leader_never_leaves_waiters_hanging(
    two_sentinels: list[SentinelProcess], slow_provider: FakeOpenAI
) -> None:
    slow_provider.script([Fault.status(503)] * 3)  # the leader's three attempts all fail
    started = time.monotonic()
    responses = await burst(two_sentinels, 20)
    elapsed = time.monotonic() - started
    statuses = [r.status_code for r in responses]
    # Everyone gets the failure (remembered for identical requests) or a fresh answer.
    assert set(statuses) <= {200, 502}, statuses
    assert 502 in statuses
    assert elapsed < 15  # bounded by the deadline, not hanging
    failures = [r for r in responses if r.status_code == 502]
    assert {r.json()["error"]["code"] for r in failures} == {"UPSTREAM_ERROR"}
    assert slow_provider.call_count == 3  # one leader's attempts; waiters did not pile on
