"""The cache decision end to end, over real HTTP between processes."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest
import redis

from tests.fakes.openai_server import FakeOpenAI
from tests.integration.conftest import SentinelProcess

pytestmark = pytest.mark.integration

QUESTION = "How can I stop being so hard on myself?"
PARAPHRASE = "How do I stop being so hard on myself?"
UNRELATED = "What is the boiling point of water at sea level?"


@pytest.fixture
def sentinel(start_on: Callable[..., SentinelProcess], redis_url: str) -> SentinelProcess:
    process = start_on(redis_url, LOG_LEVEL="INFO")
    process.wait_ready()
    return process


def ask(sentinel: SentinelProcess, body: dict[str, object]) -> httpx.Response:
    return httpx.post(f"{sentinel.base_url}/v1/query", json=body, timeout=10.0)


def test_miss_then_exact_then_semantic_then_unrelated_miss(
    sentinel: SentinelProcess, fake_llm: FakeOpenAI
) -> None:
    first = ask(sentinel, {"prompt": QUESTION})
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["match"] == "miss"
    assert body["cache_hit"] is False
    assert body["similarity"] is None
    assert body["matched_prompt"] is None
    assert body["response"] == f"answer to: {QUESTION}"
    assert body["model"] == "llama-3.1-8b-instant"
    assert body["usage"]["prompt_tokens"] > 0
    assert body["cost_usd"] > 0
    assert body["saved_usd"] == 0
    assert first.headers["x-sentinel-cache"] == "MISS"
    assert fake_llm.call_count == 1
    sent = fake_llm.calls[0]
    assert sent["messages"] == [{"role": "user", "content": QUESTION}]

    # Same question, different whitespace: exact layer, upstream not called again.
    exact = ask(sentinel, {"prompt": f"  {QUESTION.replace(' ', '   ')}\n"})
    assert exact.status_code == 200
    hit = exact.json()
    assert hit["match"] == "exact"
    assert hit["cache_hit"] is True
    assert hit["similarity"] == 1.0
    assert hit["entry_id"] == body["entry_id"]
    assert hit["response"] == body["response"]
    assert hit["matched_prompt"] == QUESTION
    assert hit["cost_usd"] == 0
    assert hit["saved_usd"] == pytest.approx(body["cost_usd"])
    assert fake_llm.call_count == 1

    semantic = ask(sentinel, {"prompt": PARAPHRASE})
    assert semantic.status_code == 200
    near = semantic.json()
    assert near["match"] == "semantic", near
    assert near["entry_id"] == body["entry_id"]
    assert near["matched_prompt"] == QUESTION
    assert 0.9 <= near["similarity"] < 1.0
    assert near["response"] == body["response"]
    assert semantic.headers["x-sentinel-cache"] == "HIT-SEMANTIC"
    assert fake_llm.call_count == 1

    other = ask(sentinel, {"prompt": UNRELATED})
    assert other.json()["match"] == "miss"
    assert other.json()["entry_id"] != body["entry_id"]
    assert fake_llm.call_count == 2


def test_per_request_threshold(sentinel: SentinelProcess, fake_llm: FakeOpenAI) -> None:
    assert ask(sentinel, {"prompt": QUESTION}).json()["match"] == "miss"
    strict = ask(sentinel, {"prompt": PARAPHRASE, "similarity_threshold": 0.999})
    assert strict.json()["match"] == "miss"
    assert fake_llm.call_count == 2
    # The strict miss stored the paraphrase itself; a loose threshold now serves a near entry.
    loose = ask(
        sentinel, {"prompt": "How can I stop being hard on myself?", "similarity_threshold": 0.5}
    )
    assert loose.json()["match"] == "semantic"
    assert fake_llm.call_count == 2


def test_scope_separates_models_and_parameters(
    sentinel: SentinelProcess, fake_llm: FakeOpenAI
) -> None:
    assert ask(sentinel, {"prompt": QUESTION}).json()["match"] == "miss"
    for variant in (
        {"model": "llama-3.3-70b-versatile"},
        {"temperature": 0.9},
        {"max_tokens": 50},
    ):
        response = ask(sentinel, {"prompt": QUESTION, **variant})
        assert response.json()["match"] == "miss", variant
        paraphrased = ask(sentinel, {"prompt": PARAPHRASE, **variant})
        assert paraphrased.json()["match"] == "semantic", variant
    assert fake_llm.call_count == 4
    assert fake_llm.calls[1]["model"] == "llama-3.3-70b-versatile"
    assert fake_llm.calls[2]["temperature"] == 0.9
    assert fake_llm.calls[3]["max_tokens"] == 50


def test_ttl_expiry_removes_the_entry_from_the_index(
    sentinel: SentinelProcess, fake_llm: FakeOpenAI, redis_url: str
) -> None:
    first = ask(sentinel, {"prompt": QUESTION, "ttl": 1}).json()
    assert first["match"] == "miss"
    metrics = httpx.get(f"{sentinel.base_url}/v1/metrics").json()
    assert metrics["entries"] == 1
    client = redis.Redis.from_url(redis_url)
    keys = client.keys("sentinel:*:entry:*")
    assert len(keys) == 1
    assert 0 < client.ttl(keys[0]) <= 1
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and client.exists(keys[0]):
        time.sleep(0.1)
    assert not client.exists(keys[0])
    assert httpx.get(f"{sentinel.base_url}/v1/metrics").json()["entries"] == 0
    again = ask(sentinel, {"prompt": PARAPHRASE}).json()
    assert again["match"] == "miss"
    assert fake_llm.call_count == 2


def test_default_ttl_is_applied(sentinel: SentinelProcess, redis_url: str) -> None:
    ask(sentinel, {"prompt": QUESTION})
    client = redis.Redis.from_url(redis_url)
    (key,) = client.keys("sentinel:*:entry:*")
    assert 3590 <= client.ttl(key) <= 3600
    stored = client.hgetall(key)
    assert len(stored[b"embedding"]) == 384 * 2  # binary FLOAT16 (the default), not JSON
    assert stored[b"prompt"].decode() == QUESTION
    assert stored[b"hits"] == b"0"


def test_prompts_and_keys_stay_out_of_info_logs(
    sentinel: SentinelProcess, fake_llm: FakeOpenAI
) -> None:
    secret_prompt = "my private question about zebra-42"
    ask(sentinel, {"prompt": secret_prompt})
    ask(sentinel, {"prompt": secret_prompt})
    logs = sentinel.wait_for_log('"match":"HIT-EXACT"')
    assert '"message":"request"' in logs
    assert "zebra-42" not in logs
    assert "answer to" not in logs
    assert "test-key" not in logs
