"""Provider faults seen through Sentinel: bounded retries, a clear 5xx, nothing stored, no hang."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from app.settings import Settings
from tests.fakes.openai_server import FakeOpenAI, Fault
from tests.integration.conftest import app_client

pytestmark = pytest.mark.integration

DEADLINE = 1.5  # UPSTREAM_TIMEOUT for these tests, seconds
SLACK = 1.5  # what the test allows beyond it (backoff rounding, a loaded machine)


def entries(redis_url: str) -> int:
    return len(redis.Redis.from_url(redis_url).keys("sentinel:*:entry:*"))


def chat(stream: bool = False) -> dict[str, Any]:
    return {
        "model": "llama-3.1-8b-instant",
        "messages": [{"role": "user", "content": "What is a fault?"}],
        "stream": stream,
    }


@pytest.mark.parametrize(
    ("faults", "status", "code", "calls"),
    [
        ([Fault.status(429)] * 3, 502, "UPSTREAM_RATE_LIMITED", 3),
        ([Fault.status(500), Fault.status(502), Fault.status(503)], 502, "UPSTREAM_ERROR", 3),
        ([Fault.timeout(10)], 504, "UPSTREAM_TIMEOUT", 1),
        ([Fault.malformed()] * 3, 502, "UPSTREAM_BAD_RESPONSE", 1),
        ([Fault.reset()] * 3, 502, "UPSTREAM_UNAVAILABLE", 3),
        ([Fault.empty()], 502, "UPSTREAM_BAD_RESPONSE", 1),
    ],
    ids=["429-storm", "5xx", "timeout-before-headers", "malformed-json", "reset", "empty-answer"],
)
async def test_fault_gives_a_clear_error_and_stores_nothing(
    make_settings: Callable[..., Settings],
    fake_llm: FakeOpenAI,
    redis_url: str,
    faults: list[Fault],
    status: int,
    code: str,
    calls: int,
) -> None:
    fake_llm.script(faults)
    async with app_client(make_settings(upstream_timeout=DEADLINE)) as http:
        started = time.monotonic()
        response = await http.post("/v1/chat/completions", json=chat())
        elapsed = time.monotonic() - started
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["type"] == "api_error"
    assert error["message"]
    assert elapsed < DEADLINE + SLACK  # bounded, never past the deadline
    assert fake_llm.call_count <= calls  # bounded retries
    assert entries(redis_url) == 0  # a failure is never stored as an answer


@pytest.mark.parametrize(
    "fault",
    [Fault.stall(10, after=2), Fault.cut(after=2), Fault.truncate(after=2), Fault.stream_error()],
    ids=["stall-mid-stream", "cut-mid-stream", "truncated-stream", "error-event"],
)
async def test_stream_fault_ends_with_an_error_event_and_stores_nothing(
    make_settings: Callable[..., Settings], fake_llm: FakeOpenAI, redis_url: str, fault: Fault
) -> None:
    fake_llm.script([fault])
    settings = make_settings(upstream_timeout=DEADLINE, stream_idle_timeout=DEADLINE)
    async with app_client(settings) as http:
        started = time.monotonic()
        response = await http.post("/v1/chat/completions", json=chat(stream=True))
        elapsed = time.monotonic() - started
    assert response.status_code == 200  # the stream had begun
    body = response.text
    assert '"error"' in body  # OpenAI's way: an error event, which its SDK raises
    assert "data: [DONE]" not in body
    assert elapsed < DEADLINE + SLACK
    assert entries(redis_url) == 0
