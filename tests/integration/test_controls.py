"""Per-request cache controls (headers and /v1/query fields) and negative caching."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis

from app.settings import Settings
from tests.fakes.openai_server import FakeOpenAI, Fault
from tests.integration.conftest import app_client

pytestmark = pytest.mark.integration

QUESTION = "What is the boiling point of water at sea level?"
PARAPHRASE = "At sea level, what is the boiling point of water?"


def chat(text: str, **params: Any) -> dict[str, Any]:
    return {
        "model": "llama-3.1-8b-instant",
        "messages": [{"role": "user", "content": text}],
        **params,
    }


async def ask(http: httpx.AsyncClient, headers: dict[str, str] | None = None, **body: Any) -> str:
    """POST /v1/query; the X-Sentinel-Cache outcome."""
    response = await http.post("/v1/query", json={"prompt": QUESTION, **body}, headers=headers)
    assert response.status_code == 200, response.text
    outcome: str = response.headers["x-sentinel-cache"]
    return outcome


@pytest.fixture
def versioned(fake_llm: FakeOpenAI) -> Iterator[FakeOpenAI]:
    """The fake answers "version 1", "version 2"... (restored afterwards: it is shared)."""
    versions = itertools.count(1)
    fake_llm.answer = lambda body: f"version {next(versions)}"
    yield fake_llm
    fake_llm.answer = None


async def test_no_cache_skips_the_lookup_and_refreshes_the_entry(
    make_settings: Callable[..., Settings], versioned: FakeOpenAI
) -> None:
    fake_llm = versioned
    async with app_client(make_settings()) as http:
        assert await ask(http) == "MISS"
        assert await ask(http) == "HIT-EXACT"
        refreshed = await http.post(
            "/v1/query", json={"prompt": QUESTION}, headers={"Cache-Control": "no-cache"}
        )
        assert refreshed.headers["x-sentinel-cache"] == "MISS"
        assert refreshed.json()["response"] == "version 2"
        hit = await http.post("/v1/query", json={"prompt": QUESTION})
        assert hit.json()["response"] == "version 2"  # the entry was replaced
        assert await ask(http, no_cache=True) == "MISS"  # the body form
    assert fake_llm.call_count == 3


async def test_no_store_keeps_the_answer_out(
    make_settings: Callable[..., Settings], fake_llm: FakeOpenAI, redis_url: str
) -> None:
    async with app_client(make_settings()) as http:
        assert await ask(http, {"Cache-Control": "no-store"}) == "MISS"
        assert await ask(http, no_store=True) == "MISS"
        response = await http.post(
            "/v1/chat/completions", json=chat(QUESTION), headers={"Cache-Control": "no-store"}
        )
        assert response.headers["x-sentinel-cache"] == "MISS"
    assert fake_llm.call_count == 3
    assert not redis.Redis.from_url(redis_url).keys("sentinel:*:entry:*")


async def test_ttl_header_sets_the_entry_ttl(
    make_settings: Callable[..., Settings], fake_llm: FakeOpenAI, redis_url: str
) -> None:
    async with app_client(make_settings()) as http:
        response = await http.post(
            "/v1/chat/completions", json=chat(QUESTION), headers={"X-Sentinel-TTL": "42"}
        )
        entry = response.headers["x-sentinel-entry"]
    (key,) = redis.Redis.from_url(redis_url).keys(f"sentinel:*:entry:{entry}")
    assert 40 <= redis.Redis.from_url(redis_url).ttl(key) <= 42


async def test_threshold_header_tightens_the_cosine_floor(
    make_settings: Callable[..., Settings], fake_llm: FakeOpenAI
) -> None:
    async with app_client(make_settings()) as http:
        assert await ask(http) == "MISS"
        strict = await http.post(
            "/v1/query", json={"prompt": PARAPHRASE}, headers={"X-Sentinel-Threshold": "0.9999"}
        )
        assert strict.headers["x-sentinel-cache"] == "MISS"
        assert await ask(http, prompt=PARAPHRASE) == "HIT-EXACT"  # the strict miss stored it


async def test_namespaces_are_separate_scopes(
    make_settings: Callable[..., Settings], fake_llm: FakeOpenAI
) -> None:
    async with app_client(make_settings()) as http:
        assert await ask(http, {"X-Sentinel-Namespace": "team-a"}) == "MISS"
        assert await ask(http, {"X-Sentinel-Namespace": "team-b"}) == "MISS"
        assert await ask(http) == "MISS"  # no namespace is a namespace of its own
        assert await ask(http, namespace="team-a") == "HIT-EXACT"
        assert await ask(http, {"X-Sentinel-Namespace": "team-a"}, prompt=PARAPHRASE) == (
            "HIT-SEMANTIC"
        )
        response = await http.post(
            "/v1/chat/completions",
            json=chat(QUESTION),
            headers={"X-Sentinel-Namespace": "team-b"},
        )
        assert response.headers["x-sentinel-cache"] == "HIT-EXACT"
    assert fake_llm.call_count == 3


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("X-Sentinel-TTL", "soon"),
        ("X-Sentinel-TTL", "0"),
        ("X-Sentinel-TTL", "-5"),
        ("X-Sentinel-TTL", "99999999999"),
        ("X-Sentinel-Threshold", "NaN"),
        ("X-Sentinel-Threshold", "1.5"),
        ("X-Sentinel-Threshold", "high"),
        ("X-Sentinel-Namespace", "has space"),
        ("X-Sentinel-Namespace", "x" * 65),
    ],
)
@pytest.mark.parametrize("path", ["/v1/query", "/v1/chat/completions"])
async def test_invalid_control_headers_are_400(
    make_settings: Callable[..., Settings],
    fake_llm: FakeOpenAI,
    header: str,
    value: str,
    path: str,
) -> None:
    body = {"prompt": QUESTION} if path == "/v1/query" else chat(QUESTION)
    async with app_client(make_settings()) as http:
        response = await http.post(path, json=body, headers={header: value})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == header
    assert header in error["message"]
    assert fake_llm.call_count == 0


# -- negative caching -------------------------------------------------------------------------


async def test_a_failure_is_remembered_and_answered_again_without_the_provider(
    make_settings: Callable[..., Settings], fake_llm: FakeOpenAI
) -> None:
    fake_llm.script([Fault.status(503)] * 3)  # every attempt of one request fails
    async with app_client(make_settings()) as http:
        first = await http.post("/v1/query", json={"prompt": QUESTION})
        assert first.status_code >= 500
        calls = fake_llm.call_count
        again = await http.post("/v1/query", json={"prompt": QUESTION})
        assert again.status_code == first.status_code
        assert again.json()["error"]["code"] == first.json()["error"]["code"]
        assert again.headers["x-sentinel-cache"] == "NEGATIVE-HIT"
        assert 1 <= int(again.headers["retry-after"]) <= 60
        assert fake_llm.call_count == calls  # the provider was not asked again

        # A different scope is not blocked, and no-cache goes to the provider.
        other = await http.post("/v1/query", json={"prompt": QUESTION, "namespace": "other"})
        assert other.status_code == 200
        retried = await http.post(
            "/v1/query", json={"prompt": QUESTION}, headers={"Cache-Control": "no-cache"}
        )
        assert retried.status_code == 200
        # The success replaced the remembered failure.
        assert await ask(http) == "HIT-EXACT"


async def test_negative_ttl_zero_turns_it_off(
    make_settings: Callable[..., Settings], fake_llm: FakeOpenAI
) -> None:
    fake_llm.script([Fault.status(503)] * 3)
    async with app_client(make_settings(negative_ttl=0)) as http:
        first = await http.post("/v1/query", json={"prompt": QUESTION})
        assert first.status_code >= 500
        assert (await http.post("/v1/query", json={"prompt": QUESTION})).status_code == 200


async def test_a_client_error_from_the_provider_is_not_remembered(
    make_settings: Callable[..., Settings], fake_llm: FakeOpenAI
) -> None:
    fake_llm.script([Fault.status(400)])
    async with app_client(make_settings()) as http:
        first = await http.post("/v1/query", json={"prompt": QUESTION})
        assert first.status_code >= 400
        second = await http.post("/v1/query", json={"prompt": QUESTION})
        assert second.status_code == 200
        assert second.headers["x-sentinel-cache"] == "MISS"


# -- cache-aside ------------------------------------------------------------------------------


async def test_cache_aside_store_then_lookup_and_the_gateway_sees_it(
    make_settings: Callable[..., Settings], fake_llm: FakeOpenAI
) -> None:
    async with app_client(make_settings()) as http:
        miss = await http.post("/v1/cache/lookup", json={"prompt": QUESTION})
        assert miss.status_code == 200
        assert miss.json() == {"hit": False, "answer": None}

        stored = await http.post(
            "/v1/cache/store",
            json={
                "prompt": QUESTION,
                "response": "100 degrees Celsius",
                "usage": {"prompt_tokens": 12, "completion_tokens": 4},
                "ttl": 600,
            },
        )
        assert stored.status_code == 201, stored.text
        entry_id = stored.json()["entry_id"]

        exact = (await http.post("/v1/cache/lookup", json={"prompt": QUESTION})).json()
        assert exact["hit"] is True
        assert exact["answer"]["response"] == "100 degrees Celsius"
        assert exact["answer"]["entry_id"] == entry_id
        near = (await http.post("/v1/cache/lookup", json={"prompt": PARAPHRASE})).json()
        assert near["answer"]["match"] == "semantic"

        # Same scoping as the gateway: /v1/query and chat find the stored answer.
        query = await http.post("/v1/query", json={"prompt": QUESTION})
        assert query.json()["response"] == "100 degrees Celsius"
        completion = await http.post("/v1/chat/completions", json=chat(QUESTION))
        assert completion.json()["choices"][0]["message"]["content"] == "100 degrees Celsius"
        # ...but not under another model or namespace.
        other = await http.post(
            "/v1/cache/lookup", json={"prompt": QUESTION, "model": "groq/other-model"}
        )
        assert other.json()["hit"] is False
        scoped = await http.post("/v1/cache/lookup", json={"prompt": QUESTION, "namespace": "x"})
        assert scoped.json()["hit"] is False
    assert fake_llm.call_count == 0


async def test_cache_aside_messages_and_tool_calls(
    make_settings: Callable[..., Settings], fake_llm: FakeOpenAI
) -> None:
    messages = [
        {"role": "system", "content": "You call tools."},
        {"role": "user", "content": "What is the weather in Rome?"},
    ]
    call = {
        "id": "call_9",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
    }
    async with app_client(make_settings()) as http:
        stored = await http.post(
            "/v1/cache/store",
            json={"messages": messages, "tool_calls": [call], "finish_reason": "tool_calls"},
        )
        assert stored.status_code == 201, stored.text
        found = (await http.post("/v1/cache/lookup", json={"messages": messages})).json()
        assert found["answer"]["tool_calls"] == [call]
        assert found["answer"]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(
    ("path", "body", "fragment"),
    [
        ("/v1/cache/lookup", {}, "prompt or messages"),
        (
            "/v1/cache/lookup",
            {"prompt": "a", "messages": [{"role": "user", "content": "a"}]},
            "prompt or messages",
        ),
        ("/v1/cache/store", {"prompt": QUESTION}, "response"),
        ("/v1/cache/store", {"prompt": QUESTION, "response": "x", "ttl": -1}, "ttl"),
        ("/v1/cache/lookup", {"prompt": QUESTION, "similarity_threshold": 2}, "similarity"),
    ],
)
async def test_cache_aside_bad_input_is_400(
    make_settings: Callable[..., Settings],
    fake_llm: FakeOpenAI,
    path: str,
    body: dict[str, Any],
    fragment: str,
) -> None:
    async with app_client(make_settings()) as http:
        response = await http.post(path, json=body)
    assert response.status_code == 400
    assert fragment in response.json()["error"]["message"]
