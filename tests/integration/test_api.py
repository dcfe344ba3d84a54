"""API contract against a real Redis Stack and the local fake provider (app in-process)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis
from litestar.testing import AsyncTestClient

from app.embedded_redis import EmbeddedRedis
from app.errors import StartupError
from app.main import create_app
from app.settings import Settings
from tests.fakes.openai_server import FakeOpenAI, Fault
from tests.integration.api import assert_error
from tests.integration.conftest import SentinelProcess, app_client, free_port

pytestmark = pytest.mark.integration


async def entry_count(redis_url: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        return len(client.keys("sentinel:*:entry:*"))
    finally:
        client.close()


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", ""),
        (b'{"prompt": "hi", "colour": "red"}', "colour"),
        (b'{"prompt": 42}', "prompt"),
        (b'{"prompt": ""}', "prompt"),
        (b'{"prompt": "hi", "similarity_threshold": 1.5}', "similarity_threshold"),
        (b'{"prompt": "hi", "similarity_threshold": -0.1}', "similarity_threshold"),
        (b'{"prompt": "hi", "ttl": 0}', "ttl"),
        (b'{"prompt": "hi", "ttl": -5}', "ttl"),
        (b'{"prompt": "hi", "ttl": 1.5}', "ttl"),
        (b'{"prompt": "hi", "max_tokens": "many"}', "max_tokens"),
        (b'{"prompt": "hi", "temperature": 9}', "temperature"),
        (b"[]", ""),
        (b"{}", "prompt"),
    ],
)
async def test_bad_bodies_get_400(
    client: httpx.AsyncClient, fake_llm: FakeOpenAI, body: bytes, fragment: str
) -> None:
    response = await client.post(
        "/v1/query", content=body, headers={"content-type": "application/json"}
    )
    message = assert_error(response, 400, "INVALID_REQUEST")["message"]
    assert fragment in message
    assert fake_llm.call_count == 0


async def test_whitespace_prompt_is_400(client: httpx.AsyncClient, fake_llm: FakeOpenAI) -> None:
    response = await client.post("/v1/query", json={"prompt": " \n\t "})
    assert_error(response, 400, "EMPTY_PROMPT")
    assert fake_llm.call_count == 0


async def test_prompt_over_limit_is_413(
    make_settings: Callable[..., Settings], fake_llm: FakeOpenAI
) -> None:
    async with app_client(make_settings(max_prompt_chars=100)) as http:
        ok = await http.post("/v1/query", json={"prompt": "x" * 100})
        assert ok.status_code == 200
        response = await http.post("/v1/query", json={"prompt": "x" * 101})
        message = assert_error(response, 413, "PROMPT_TOO_LARGE")["message"]
        assert "MAX_PROMPT_CHARS" in message
    assert fake_llm.call_count == 1


async def test_unknown_route_and_method(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/v1/nothing"), 404, "NOT_FOUND")
    assert_error(await client.get("/v1/query"), 405, "METHOD_NOT_ALLOWED")


async def test_retry_after_429_then_success(
    client: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    fake_llm.script([Fault.status(429, retry_after="0")])
    response = await client.post("/v1/query", json={"prompt": "What is HNSW?"})
    assert response.status_code == 200, response.text
    assert response.json()["match"] == "miss"
    assert fake_llm.call_count == 2
    again = await client.post("/v1/query", json={"prompt": "What is HNSW?"})
    assert again.json()["match"] == "exact"
    assert fake_llm.call_count == 2


async def test_upstream_timeout_is_504_and_stores_nothing(
    make_settings: Callable[..., Settings], fake_llm: FakeOpenAI, redis_url: str
) -> None:
    fake_llm.script([Fault.timeout(3.0)])
    async with app_client(make_settings(upstream_timeout=0.5)) as http:
        response = await http.post("/v1/query", json={"prompt": "What is HNSW?"})
        assert_error(response, 504, "UPSTREAM_TIMEOUT")
        assert await entry_count(redis_url) == 0
        # The failure is remembered (negative caching) for the same request...
        remembered = await http.post("/v1/query", json={"prompt": "What is HNSW?"})
        assert_error(remembered, 504, "UPSTREAM_TIMEOUT")
        assert remembered.headers["x-sentinel-cache"] == "NEGATIVE-HIT"
        # ...and a caller who wants a fresh try says so.
        retry = await http.post(
            "/v1/query", json={"prompt": "What is HNSW?"}, headers={"Cache-Control": "no-cache"}
        )
        assert retry.status_code == 200
        assert retry.json()["match"] == "miss"


async def test_upstream_errors_are_502_and_store_nothing(
    client: httpx.AsyncClient, fake_llm: FakeOpenAI, redis_url: str
) -> None:
    fake_llm.script([Fault.status(500), Fault.status(502), Fault.status(503)])
    response = await client.post("/v1/query", json={"prompt": "What is HNSW?"})
    assert_error(response, 502, "UPSTREAM_ERROR")
    assert fake_llm.call_count == 3
    fake_llm.script([Fault.empty()])
    response = await client.post(
        "/v1/query", json={"prompt": "What is HNSW?"}, headers={"Cache-Control": "no-cache"}
    )
    assert_error(response, 502, "UPSTREAM_BAD_RESPONSE")
    assert fake_llm.call_count == 4
    assert await entry_count(redis_url) == 0


async def test_no_upstream_key_still_serves_hits(
    make_settings: Callable[..., Settings], fake_llm: FakeOpenAI
) -> None:
    async with app_client(make_settings()) as http:
        assert (await http.post("/v1/query", json={"prompt": "What is HNSW?"})).status_code == 200
    async with app_client(make_settings(groq_api_key=None)) as http:
        health = (await http.get("/health")).json()
        assert health["upstream_status"] == "not_configured"
        hit = await http.post("/v1/query", json={"prompt": "What is HNSW?"})
        assert hit.json()["match"] == "exact"
        miss = await http.post("/v1/query", json={"prompt": "Something never asked"})
        message = assert_error(miss, 503, "UPSTREAM_NOT_CONFIGURED")["message"]
        assert "GROQ_API_KEY" in message
    assert fake_llm.call_count == 1


async def test_health_and_metrics_after_a_known_sequence(
    client: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    health = await client.get("/health")
    assert health.status_code == 200
    report = health.json()
    assert report["status"] == "ok"
    assert report["redis"] == "ok"
    assert report["index_exists"] is True
    assert report["embedder"] == "minilm-l6-sentinel-ft2-qint8"
    assert report["embedding_dimension"] == 384
    assert report["guard"] == "on"
    assert report["upstream_status"] == "configured"
    assert report["redis_mode"] == "external"

    for prompt in [
        "How can I stop being so hard on myself?",  # miss
        "How can I stop being so hard on myself?",  # exact
        "How do I stop being so hard on myself?",  # semantic
        "What is the boiling point of water at sea level?",  # miss
    ]:
        assert (await client.post("/v1/query", json={"prompt": prompt})).status_code == 200
    fake_llm.script([Fault.status(500)] * 3)
    assert (await client.post("/v1/query", json={"prompt": "A third question"})).status_code == 502
    await client.post("/v1/query", json={"prompt": ""})  # a 400 never reaches the service

    metrics = (await client.get("/v1/metrics")).json()
    assert metrics["requests"] == 5
    assert metrics["exact_hits"] == 1
    assert metrics["semantic_hits"] == 1
    assert metrics["misses"] == 2
    assert metrics["errors"] == 1
    assert metrics["hit_rate"] == 0.5
    assert metrics["upstream_calls"] == 3  # requests that called it (retries not counted)
    assert metrics["upstream_errors"] == 1
    assert metrics["entries"] == 2
    assert metrics["latency_ms"]["hit"]["count"] == 2
    assert metrics["latency_ms"]["miss"]["count"] == 2
    assert metrics["latency_ms"]["hit"]["p50"] > 0
    assert metrics["latency_ms"]["miss"]["p95"] >= metrics["latency_ms"]["miss"]["p50"]
    assert metrics["tokens_saved"] > 0
    assert metrics["usd_saved"] > 0
    assert "groq" in metrics["price_source"].lower()


async def test_metrics_are_shared_and_survive_a_restart(
    make_settings: Callable[..., Settings],
) -> None:
    async with app_client(make_settings()) as first:
        await first.post("/v1/query", json={"prompt": "What is HNSW?"})
    async with app_client(make_settings()) as second:
        await second.post("/v1/query", json={"prompt": "What is HNSW?"})
        metrics = (await second.get("/v1/metrics")).json()
    assert metrics["requests"] == 2
    assert metrics["misses"] == 1
    assert metrics["exact_hits"] == 1


async def test_health_is_degraded_while_the_index_is_gone_until_it_is_recreated(
    client: httpx.AsyncClient, redis_url: str
) -> None:
    plain = redis.Redis.from_url(redis_url)
    for name in plain.execute_command("FT._LIST"):
        plain.execute_command("FT.DROPINDEX", name)
    plain.close()
    response = await client.get("/health")
    # Degraded, but answering through the provider: a load balancer keeps the instance.
    assert response.status_code == 200
    report = response.json()
    assert report["status"] == "degraded"
    assert report["index_exists"] is False
    assert any("index" in reason for reason in report["reasons"])
    # Requests bypass the cache meanwhile, and the breaker's probe recreates the index.
    answer = await client.post("/v1/query", json={"prompt": "Is the index back?"})
    assert answer.status_code == 200
    assert answer.headers["X-Sentinel-Cache"] == "BYPASS"
    for _ in range(50):
        report = (await client.get("/health")).json()
        if report["status"] == "ok":
            break
        await asyncio.sleep(0.1)
    assert report["status"] == "ok", report
    assert report["index_exists"] is True


async def test_schema_is_served(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/schema/openapi.json")).json()
    assert "/v1/query" in schema["paths"]
    assert "/health" in schema["paths"]
    assert "/v1/metrics" in schema["paths"]


async def test_redis_without_search_module_fails_startup(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    plain = EmbeddedRedis(port=free_port(), data_dir=tmp_path, appendonly=False, load_search=False)
    await plain.start()
    try:
        # The test client runs the lifespan in a task group, which wraps the error.
        with pytest.RaisesGroup(
            pytest.RaisesExc(StartupError, match=r"Redis Stack or Redis 8"), flatten_subgroups=True
        ):
            async with app_client(make_settings(redis_url=plain.url)):
                pass
    finally:
        await plain.stop()


def test_redis_without_search_stops_the_process_with_one_clear_line(
    tmp_path: Path, start_sentinel: Callable[[dict[str, str]], SentinelProcess]
) -> None:
    plain = EmbeddedRedis(port=free_port(), data_dir=tmp_path, appendonly=False, load_search=False)
    plain.start_sync()
    try:
        process = start_sentinel({"REDIS_URL": plain.url})
        assert process.process.wait(timeout=30) != 0
        logs = process.logs()
        assert "Redis Stack or Redis 8" in logs
    finally:
        plain.stop_sync()


def test_bad_setting_stops_the_process_with_one_line(
    start_sentinel: Callable[[dict[str, str]], SentinelProcess],
) -> None:
    process = start_sentinel({"SIMILARITY_THRESHOLD": "1.7"})
    assert process.process.wait(timeout=30) == 2
    lines = process.logs().strip().splitlines()
    assert len(lines) == 1
    assert "SIMILARITY_THRESHOLD" in lines[0]


async def test_body_over_the_limit_is_413(client: httpx.AsyncClient, fake_llm: FakeOpenAI) -> None:
    body = b'{"prompt": "' + b"x" * (1024 * 1024) + b'"}'
    response = await client.post(
        "/v1/query", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "PROMPT_TOO_LARGE"  # as the README documents
    assert "1 MiB" in response.json()["error"]["message"]
    assert fake_llm.call_count == 0


async def test_an_exact_hit_computes_no_embedding(make_settings: Callable[..., Settings]) -> None:
    app = create_app(make_settings())
    async with AsyncTestClient(app=app) as http:
        embedder = app.state.service.embedder
        embedded: list[str] = []
        original = embedder.embed

        async def counting_embed(text: str) -> object:
            embedded.append(text)
            return await original(text)

        embedder.embed = counting_embed
        assert (await http.post("/v1/query", json={"prompt": "What is HNSW?"})).json()[
            "match"
        ] == "miss"
        assert embedded == ["What is HNSW?"]
        assert (await http.post("/v1/query", json={"prompt": " What  is HNSW? "})).json()[
            "match"
        ] == "exact"
        assert embedded == ["What is HNSW?"]
        assert (await http.post("/v1/query", json={"prompt": "What is an HNSW index?"})).json()[
            "match"
        ] in {"semantic", "miss"}
        assert len(embedded) == 2
