"""The cache-hit fast path (app/api/fast.py) answers as the handlers do: the same requests, sent
to an app with it and to one without it (each on an emptied Redis), get the same statuses,
bodies and headers, the same access-log lines, the same Prometheus counts and the same
provider calls; only what differs by nature (request ids, latencies, timestamps) is masked."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from litestar.testing import AsyncTestClient
from prometheus_client import generate_latest

from app.main import create_app
from app.settings import Settings
from tests.fakes.openai_server import FakeOpenAI, Fault

pytestmark = pytest.mark.integration

MODEL = "groq/llama-3.1-8b-instant"
QUESTION = "How can I stop being so hard on myself?"
PARAPHRASE = "How do I stop being so hard on myself?"
KEY_A = "sk-fast-team-a-0123456789abcdef"
KEYS = f"{KEY_A}=team-a"
A = {"Authorization": f"Bearer {KEY_A}"}

FAILING = "What will the provider fail to answer?"
# A provider failure is remembered for the request (negative cache): the fast path's lookup
# finds it, and the handler raises it; the paraphrase then misses, and its answer is stored.
FAILURE_SCRIPT_FAULTS = [Fault.status(503)] * 3  # the first try and both retries

# (method, path, JSON body or raw bytes, headers)
Step = tuple[str, str, Any, dict[str, str]]


def chat(content: str, **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **fields}


OPEN_SCRIPT: list[Step] = [
    ("POST", "/v1/chat/completions", chat(QUESTION), {}),  # a miss, stored
    ("POST", "/v1/chat/completions", chat(QUESTION), {}),  # exact hits
    ("POST", "/v1/chat/completions", chat(QUESTION), {"X-Request-Id": "req-fast-1"}),
    ("POST", "/v1/query", {"prompt": QUESTION}, {}),
    ("POST", "/v1/chat/completions", chat(QUESTION, stream=True), {}),  # a replayed stream
    ("POST", "/v1/query", {"prompt": QUESTION, "stream": True}, {}),
    ("POST", "/v1/chat/completions", chat(QUESTION), {"Cache-Control": "no-cache"}),
    ("POST", "/v1/query", {"prompt": QUESTION, "no_cache": True}, {}),
    ("POST", "/v1/query", {"prompt": QUESTION}, {"X-Sentinel-Namespace": "ns-1"}),  # miss
    ("POST", "/v1/query", {"prompt": QUESTION}, {"X-Sentinel-Namespace": "ns-1"}),  # hit
    ("POST", "/v1/query", {"prompt": QUESTION}, {"X-Sentinel-TTL": "soon"}),  # 400
    ("POST", "/v1/query", {"prompt": QUESTION, "temperature": 0.5}, {}),  # another scope
    ("POST", "/v1/query", {"prompt": QUESTION, "temperature": 0.5}, {}),
    ("POST", "/v1/query", {"prompt": PARAPHRASE}, {}),  # semantic hit
    ("POST", "/v1/query", {"prompt": PARAPHRASE}, {}),  # the same, through its alias
    ("POST", "/v1/query", {"prompt": "bell \x07 rings"}, {}),  # control character: 400
    ("POST", "/v1/query", b'{"prompt": ', {}),  # malformed JSON
    ("POST", "/v1/query", {"prompt": QUESTION, "colour": "red"}, {}),  # unknown field
    ("POST", "/v1/query", {"prompt": QUESTION, "ttl": "60"}, {}),  # a string Litestar converts
    ("POST", "/v1/query", b"", {}),  # no body
    ("POST", "/v1/query", {"prompt": QUESTION}, {"Content-Type": "text/plain"}),  # 415
    ("POST", "/v1/chat/completions", {**chat(QUESTION), "model": "nowhere/x"}, {}),
    ("POST", "/v1/chat/completions", chat(QUESTION, n=1, seed=7), {}),  # miss
    ("POST", "/v1/chat/completions", chat(QUESTION, n=1, seed=7), {}),  # hit
    ("POST", "/v1/chat/completions", chat("x" * 40_000), {}),  # prompt too large
    ("GET", "/v1/query", None, {}),  # 405
]

FAILURE_SCRIPT: list[Step] = [
    ("POST", "/v1/query", {"prompt": FAILING}, {}),  # the provider's 503s: 502, remembered
    ("POST", "/v1/query", {"prompt": FAILING}, {}),  # the remembered 502: no provider call
    ("POST", "/v1/chat/completions", chat(FAILING), {}),  # the same request: remembered too
    ("POST", "/v1/query", {"prompt": QUESTION}, {}),  # a miss, stored
    ("POST", "/v1/query", {"prompt": PARAPHRASE}, {}),  # a semantic hit, answered fast
]

KEYED_SCRIPT: list[Step] = [
    ("POST", "/v1/query", {"prompt": QUESTION}, {}),  # 401
    ("POST", "/v1/query", {"prompt": QUESTION}, {"Authorization": "Bearer sk-wrong"}),
    ("POST", "/v1/query", b'{"prompt": ', {}),  # 401 before the body is looked at
    ("POST", "/v1/query", {"prompt": QUESTION}, A),  # miss
    ("POST", "/v1/query", {"prompt": QUESTION}, {"X-API-Key": KEY_A}),  # hit
    ("POST", "/v1/chat/completions", chat(QUESTION), A),  # hit
    ("POST", "/v1/query", {"prompt": QUESTION}, A),  # over the limit of 4 a minute: 429
    ("POST", "/v1/query", {"prompt": QUESTION}, A),
]

_VARYING = re.compile(rb'"(created|latency_ms)":[0-9.e-]+')
_RETRY_IN = re.compile(rb"retry in [0-9]+ s")
_HEX_ID = re.compile(r"[0-9a-f]{32}")


@dataclass
class Observed:
    """What one app answered to a script, masked where it varies by nature."""

    responses: list[tuple[int, dict[str, str], bytes]] = field(default_factory=list)
    access_log: list[dict[str, Any]] = field(default_factory=list)
    counts: list[str] = field(default_factory=list)
    provider_calls: int = 0


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.fields: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.fields.append(dict(getattr(record, "fields", {})))


def _empty(url: str) -> None:
    client = redis.Redis.from_url(url)
    for name in client.execute_command("FT._LIST"):
        client.execute_command("FT.DROPINDEX", name)
    client.flushall()
    client.close()


def _masked(response: Any) -> tuple[int, dict[str, str], bytes]:
    headers = dict(response.headers)
    request_id = headers.get("x-request-id")
    if request_id is not None and not request_id.startswith("req-"):
        headers["x-request-id"] = "generated" if _HEX_ID.fullmatch(request_id) else request_id
    if "content-length" in headers:  # it varies with the latency's digits
        assert int(headers.pop("content-length")) == len(response.content)
    if "retry-after" in headers:
        headers["retry-after"] = "seconds"
    content = _RETRY_IN.sub(b"retry in N s", _VARYING.sub(rb'"\1":0', response.content))
    return response.status_code, headers, content


async def _aliases(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return len(list(client.scan_iter(match="sentinel:*:alias:*")))
    finally:
        client.close()


async def _run(
    settings: Settings,
    fake_llm: FakeOpenAI,
    script: list[Step],
    *,
    fast: bool,
    faults: list[Fault] | None = None,
) -> Observed:
    _empty(settings.redis_url)
    fake_llm.reset()
    fake_llm.script(faults or [])
    seen = Observed()
    lines = _Lines()
    access = logging.getLogger("sentinel.access")
    access.addHandler(lines)
    level, access.level = access.level, logging.INFO
    app = create_app(settings, fast_path=fast)
    try:
        async with AsyncTestClient(app=app) as http:
            for method, path, body, headers in script:
                content = body if isinstance(body, bytes) else None
                json = None if isinstance(body, bytes) else body
                response = await http.request(
                    method, path, json=json, content=content, headers=headers
                )
                seen.responses.append(_masked(response))
                if path == "/v1/query" and body == {"prompt": PARAPHRASE}:
                    # The alias is written after the semantic hit's answer: wait for it, so
                    # that the repeat is served through it in both runs.
                    deadline = time.monotonic() + 10
                    while await _aliases(settings.redis_url) < 1 and time.monotonic() < deadline:
                        await asyncio.sleep(0.02)
            registry = app.state.service.cache.metrics.prometheus.registry
    finally:
        access.removeHandler(lines)
        access.level = level
    seen.access_log = [{k: v for k, v in f.items() if k != "latency_ms"} for f in lines.fields]
    seen.counts = [
        line
        for line in generate_latest(registry).decode().splitlines()
        if re.match(r"^sentinel_\w+(_total|_count)\{", line)
    ]
    seen.provider_calls = fake_llm.call_count
    return seen


def _assert_same(fast: Observed, slow: Observed, script: list[Step]) -> None:
    for step, got, want in zip(script, fast.responses, slow.responses, strict=True):
        assert got == want, step[:3]
    assert fast.access_log == slow.access_log
    assert fast.counts == slow.counts
    assert fast.provider_calls == slow.provider_calls


async def test_open_mode_answers_the_same_with_and_without_the_fast_path(
    make_settings: Callable[..., Settings], fake_llm: FakeOpenAI
) -> None:
    settings = make_settings()
    fast = await _run(settings, fake_llm, OPEN_SCRIPT, fast=True)
    slow = await _run(settings, fake_llm, OPEN_SCRIPT, fast=False)
    _assert_same(fast, slow, OPEN_SCRIPT)
    # The script covers what it means to: exact hits on both routes, and the hand-offs.
    caches = [headers.get("x-sentinel-cache") for _, headers, _ in fast.responses]
    assert caches.count("HIT-EXACT") >= 7
    assert "HIT-SEMANTIC" in caches
    assert {status for status, _, _ in fast.responses} >= {200, 400, 405, 413, 415}
    assert fast.responses[2][1]["x-request-id"] == "req-fast-1"
    exact = [line for line in fast.counts if line.startswith("sentinel_requests_total")]
    assert any('outcome="exact"' in line for line in exact)
    assert any(line.startswith("sentinel_layer_duration_seconds_count") for line in fast.counts)


async def test_keyed_mode_admits_refuses_and_rate_limits_the_same(
    make_settings: Callable[..., Settings], fake_llm: FakeOpenAI
) -> None:
    settings = make_settings(sentinel_api_keys=KEYS, rate_limit_per_minute=4)
    fast = await _run(settings, fake_llm, KEYED_SCRIPT, fast=True)
    slow = await _run(settings, fake_llm, KEYED_SCRIPT, fast=False)
    _assert_same(fast, slow, KEYED_SCRIPT)
    statuses = [status for status, _, _ in fast.responses]
    # A key's request counts once against its limit, whichever path answered it.
    assert statuses == [401, 401, 401, 200, 200, 200, 200, 429]


async def test_remembered_failures_and_semantic_hits_answer_the_same(
    make_settings: Callable[..., Settings], fake_llm: FakeOpenAI
) -> None:
    settings = make_settings()
    faults = FAILURE_SCRIPT_FAULTS
    fast = await _run(settings, fake_llm, FAILURE_SCRIPT, fast=True, faults=list(faults))
    slow = await _run(settings, fake_llm, FAILURE_SCRIPT, fast=False, faults=list(faults))
    _assert_same(fast, slow, FAILURE_SCRIPT)
    statuses = [status for status, _, _ in fast.responses]
    assert statuses[:3] == [502, 502, 502]
    caches = [headers.get("x-sentinel-cache") for _, headers, _ in fast.responses]
    assert caches[-1] == "HIT-SEMANTIC"
    negative = [line for line in fast.counts if 'outcome="negative_hit"' in line]
    assert negative
    # Three tries of the failing request, none for its repeats, one for the question.
    assert fast.provider_calls == 4
