"""Fail closed, degrade everywhere (issue 11).

Auth is configuration, never inferred from what Redis holds: open mode ignores credentials
without asking Redis (the OpenAI SDK always sends one), keys mode never opens when Redis loses
its data. An embedder that fails or hangs costs the semantic layer, never a request. Identical
requests in flight share their leader's answer or failure, each counted for itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from openai import OpenAI

from app.cache import keys
from app.cache.apikeys import REGISTRY_KEY
from app.settings import Settings
from tests.fakes.jina_server import FakeJina, Reply
from tests.fakes.openai_server import FakeOpenAI, Fault
from tests.integration.api import ask, assert_error, bearer, create_key
from tests.integration.conftest import ROOT, SentinelProcess, app_client
from tests.integration.servers import RedisServer, free_port, wait_for

pytestmark = pytest.mark.integration

ADMIN = "admin-fail-closed-3c9d0e1f2a4b5c6d"
QUESTION = "What is the boiling point of water at sea level?"
StartOn = Callable[..., SentinelProcess]


async def poll(check: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    """Await `check()` until it is true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := await check()):
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.05)
    return value


# -- auth: open mode ignores credentials without Redis; keys mode never opens by itself ------


def test_the_sdk_placeholder_key_is_served_in_open_mode_while_redis_is_down(
    redis_server: RedisServer, fake_llm: FakeOpenAI, start_on: StartOn
) -> None:
    sentinel = start_on(redis_server.url, CACHE_PROBE_INTERVAL_MS="200")
    sentinel.wait_ready()
    # The README's snippet: the SDK sends `Authorization: Bearer unused` on every call.
    client = OpenAI(base_url=f"{sentinel.base_url}/v1", api_key="unused", max_retries=0)

    def chat(prompt: str) -> tuple[str, str]:
        raw = client.chat.completions.with_raw_response.create(
            model="groq/llama-3.1-8b-instant", messages=[{"role": "user", "content": prompt}]
        )
        return raw.headers["x-sentinel-cache"], raw.parse().choices[0].message.content or ""

    assert chat("What is HNSW?") == ("MISS", "answer to: What is HNSW?")
    assert chat("What is HNSW?")[0] == "HIT-EXACT"

    redis_server.kill()
    for i in range(8):  # every request answered: the placeholder key never reaches Redis
        prompt = f"Question {i} while Redis is down"
        assert chat(prompt) == ("BYPASS", f"answer to: {prompt}")
    stream = client.chat.completions.create(
        model="groq/llama-3.1-8b-instant",
        messages=[{"role": "user", "content": "Streamed while Redis is down"}],
        stream=True,
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "answer to: Streamed while Redis is down"
    health = httpx.get(f"{sentinel.base_url}/health", timeout=10).json()
    assert health["auth"] == "open"
    assert health["cache"] == "bypass"
    client.close()


async def test_an_admin_key_alone_means_keys_mode_from_the_start(
    make_settings: Callable[..., Settings], fake_llm: FakeOpenAI
) -> None:
    async with app_client(make_settings(sentinel_admin_key=ADMIN)) as http:
        assert (await http.get("/health")).json()["auth"] == "keys"
        assert_error(await ask(http, QUESTION), 401, "INVALID_API_KEY")
        assert_error(await ask(http, QUESTION, bearer("unused")), 401, "INVALID_API_KEY")
    assert fake_llm.call_count == 0
    # Open with an admin key is a choice an operator makes explicitly.
    explicit = make_settings(sentinel_admin_key=ADMIN, sentinel_auth="open")
    async with app_client(explicit) as http:
        assert (await http.get("/health")).json()["auth"] == "open"
        assert (await ask(http, QUESTION, bearer("unused"))).status_code == 200
        listed = await http.get("/v1/admin/keys", headers=bearer("unused"))
        assert_error(listed, 401, "INVALID_API_KEY")  # admin routes still want the admin key


async def test_losing_redis_data_never_opens_an_instance_started_afterwards(
    make_settings: Callable[..., Settings], fake_llm: FakeOpenAI, redis_url: str
) -> None:
    settings = make_settings(sentinel_admin_key=ADMIN)
    async with app_client(settings) as http:
        key = (await create_key(http, ADMIN, tenant="acme"))["key"]
        assert (await ask(http, QUESTION, bearer(key))).status_code == 200

    # Redis loses everything: a flush here; an eviction or a new empty server look the same.
    plain = redis.Redis.from_url(redis_url)
    plain.flushall()
    plain.close()

    async with app_client(settings) as http:
        assert (await http.get("/health")).json()["auth"] == "keys"
        assert_error(await ask(http, QUESTION), 401, "INVALID_API_KEY")
        assert_error(await ask(http, QUESTION, bearer("unused")), 401, "INVALID_API_KEY")
        # The key's record went with the data: refused, never admitted as "no key exists".
        assert_error(await ask(http, QUESTION, bearer(key)), 401, "INVALID_API_KEY")
    assert fake_llm.call_count == 1


def test_volatile_lru_evicts_entries_never_keys_or_counters(
    redis_server: RedisServer, fake_llm: FakeOpenAI, start_on: StartOn
) -> None:
    conf = (ROOT / "infra" / "redis" / "redis.conf").read_text()
    shipped = re.search(r"^maxmemory-policy (\S+)$", conf, re.MULTILINE)
    assert shipped is not None
    assert shipped.group(1) == "volatile-lru"
    sentinel = start_on(redis_server.url, SENTINEL_ADMIN_KEY=ADMIN, RATE_LIMIT_PER_MINUTE="1000")
    sentinel.wait_ready()
    with httpx.Client(base_url=sentinel.base_url, timeout=15) as http:
        created = http.post("/v1/admin/keys", json={"tenant": "acme"}, headers=bearer(ADMIN))
        assert created.status_code == 201, created.text
        key, key_id = created.json()["key"], created.json()["id"]
        for i in range(3):
            asked = http.post("/v1/query", json={"prompt": f"q{i}"}, headers=bearer(key))
            assert asked.status_code == 200, asked.text
        health = http.get("/health").json()
        prefix = keys.entry_prefix(health["embedder"], health["embedding_dimension"])

        plain = redis_server.client()
        # Counted in process, written within the metrics' flush interval.
        counters = wait_for(
            lambda: (c := plain.hgetall(keys.METRICS_KEY)).get(b"requests") == b"3" and c,
            "the metrics flush",
        )
        plain.config_set("maxmemory", int(plain.info("memory")["used_memory"]) + 2 * 1024 * 1024)
        plain.config_set("maxmemory-policy", shipped.group(1))
        # Entries as Sentinel stores them, with a TTL: ~8 MB of them, four times the room left.
        pipe = plain.pipeline(transaction=False)
        for i in range(2000):
            pipe.hset(
                f"{prefix}filler{i}",
                mapping={"prompt": f"filler {i}", "response": "x" * 4000, "scope": "filler"},
            )
            pipe.expire(f"{prefix}filler{i}", 3600)
            if i % 200 == 199:
                pipe.execute()
        pipe.execute()
        assert int(plain.info("stats")["evicted_keys"]) > 0
        # What Sentinel needs to stay correct is all there: key records, registry, counters.
        assert plain.hget(REGISTRY_KEY, key_id) is not None
        assert plain.hgetall(keys.METRICS_KEY) == counters
        served = http.post("/v1/query", json={"prompt": "after"}, headers=bearer(key))
        assert served.status_code == 200, served.text
        assert http.post("/v1/query", json={"prompt": "after"}).status_code == 401
        wait_for(lambda: plain.hget(keys.METRICS_KEY, "requests") == b"4", "the metrics flush")
        plain.close()


# -- the embedder degrades like Redis: a budget, a breaker, the provider answers -------------

DIMS = 64


def bag_of_words(text: str, dims: int) -> list[float]:
    """A vector that is the same for the same words in any order (so a reordering hits)."""
    vector = np.full(dims, 0.01)
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        vector[int.from_bytes(hashlib.sha256(word.encode()).digest()[:4], "little") % dims] += 1
    return [float(x) for x in vector]


@pytest.fixture
async def jina() -> AsyncIterator[FakeJina]:
    server = FakeJina(bag_of_words, dims=DIMS)
    await server.start()
    yield server
    await server.stop()


def jina_settings(make_settings: Callable[..., Settings], base_url: str, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "embedding_provider": "jina",
        "jina_api_key": "jina-test-key",
        "jina_base_url": base_url,
        "jina_dimensions": DIMS,
        "embed_timeout_ms": 400,
        "embed_probe_interval_ms": 100,
    }
    return make_settings(**(values | extra))


async def timed_ask(http: httpx.AsyncClient, prompt: str) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await ask(http, prompt)
    return response, time.monotonic() - started


async def test_an_unreachable_embedder_still_answers_and_keeps_answers_for_exact_hits(
    make_settings: Callable[..., Settings], fake_llm: FakeOpenAI
) -> None:
    unreachable = f"http://127.0.0.1:{free_port()}/v1"
    settings = jina_settings(make_settings, unreachable, embed_breaker_failures=2)
    async with app_client(settings) as http:
        first = await ask(http, QUESTION)
        assert first.status_code == 200, first.text  # was 502 EMBEDDING_ERROR
        assert first.headers["x-sentinel-cache"] == "MISS"
        assert first.json()["response"] == f"answer to: {QUESTION}"
        again = await ask(http, "  What is the boiling   point of water at sea level? ")
        assert again.headers["x-sentinel-cache"] == "HIT-EXACT"
        paraphrase = await ask(http, "At sea level, what temperature does water boil at?")
        assert paraphrase.status_code == 200, paraphrase.text
        assert paraphrase.headers["x-sentinel-cache"] == "MISS"
        health = (await http.get("/health")).json()
        assert health["embedding"] == "bypass"
        assert health["status"] == "degraded"
        assert any(reason.startswith("embedder:") for reason in health["reasons"])
        assert health["semantic_skipped"] == 2
    assert fake_llm.call_count == 2


async def test_a_failing_then_hanging_embedder_costs_at_most_its_budget_and_recovers(
    make_settings: Callable[..., Settings], fake_llm: FakeOpenAI, jina: FakeJina
) -> None:
    budget = 0.4
    # Past the budget, only the provider's own time (none here) and the machine's noise.
    bound = budget + 2.0
    async with app_client(jina_settings(make_settings, jina.base_url)) as http:
        stored = "How long should I boil an egg for a soft yolk?"
        assert (await ask(http, stored)).headers["x-sentinel-cache"] == "MISS"

        jina.fault = Reply(delay=60.0)  # hanging: Jina's own 10 s timeout would be felt
        for i in range(3):
            response, took = await timed_ask(http, f"hanging embedder question {i}")
            assert response.status_code == 200, response.text
            assert response.headers["x-sentinel-cache"] == "MISS"
            assert took < bound, took
        health = (await http.get("/health")).json()
        assert health["embedding"] == "bypass"  # three late embeddings in a row
        assert "took longer than 400 ms" in " ".join(health["reasons"])

        jina.fault = Reply(status=503)  # now failing fast; the breaker skips it anyway
        for i in range(5):
            response, took = await timed_ask(http, f"failing embedder question {i}")
            assert response.status_code == 200, response.text
            assert response.headers["x-sentinel-cache"] == "MISS"
            assert took < bound, took
        # Exact hits never needed the embedder, and misses were kept for them.
        assert (await ask(http, stored)).headers["x-sentinel-cache"] == "HIT-EXACT"
        kept = await ask(http, "failing embedder question 0")
        assert kept.headers["x-sentinel-cache"] == "HIT-EXACT"
        assert fake_llm.call_count == 1 + 3 + 5

        jina.fault = None  # the embedder is back: the probe closes the breaker by itself

        async def embedding_on() -> bool:
            return bool((await http.get("/health")).json()["embedding"] == "on")

        await poll(embedding_on, "the embedder's breaker closes once it answers")
        reordered = await ask(http, "For a soft yolk, how long should I boil an egg?")
        assert reordered.headers["x-sentinel-cache"] == "HIT-SEMANTIC", reordered.json()
    assert fake_llm.call_count == 1 + 3 + 5


# -- coalescing: followers get the leader's outcome, each counted and timed for itself -------


def coalescing_sentinel(start_on: StartOn, redis_url: str) -> SentinelProcess:
    """A Sentinel process (concurrent requests need real HTTP: the in-process client takes
    them one at a time) with a lookup budget that 2 busy cores always meet."""
    sentinel = start_on(redis_url, CACHE_LOOKUP_TIMEOUT_MS="2000")
    sentinel.wait_ready()
    return sentinel


async def test_a_leaders_400_reaches_its_followers_without_more_provider_calls(
    start_on: StartOn, redis_url: str, fake_llm: FakeOpenAI
) -> None:
    sentinel = coalescing_sentinel(start_on, redis_url)
    fake_llm.delay = 1.0  # every identical request arrives while the first is in flight
    fake_llm.script([Fault.status(400, message="this model does not take that parameter")])
    try:
        async with httpx.AsyncClient(base_url=sentinel.base_url, timeout=30) as http:
            responses = await asyncio.gather(*(ask(http, QUESTION) for _ in range(5)))
            metrics = (await http.get("/v1/metrics")).json()
    finally:
        fake_llm.delay = 0.0
    for response in responses:
        assert_error(response, 400, "UPSTREAM_REJECTED")
    assert fake_llm.call_count == 1  # not one call per follower, in turn
    assert metrics["errors"] == 5
    assert metrics["upstream_calls"] == 1


async def test_followers_of_a_follower_are_counted_and_timed_themselves(
    start_on: StartOn, redis_url: str, fake_llm: FakeOpenAI
) -> None:
    first = coalescing_sentinel(start_on, redis_url)
    second = coalescing_sentinel(start_on, redis_url)
    fake_llm.delay = 1.5
    plain = redis.Redis.from_url(redis_url)
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            leader = asyncio.create_task(ask_at(http, first, QUESTION))

            async def locked() -> bool:
                return any(True for _ in plain.scan_iter(match="sentinel:flight:*"))

            await poll(locked, "the first instance leads under the Redis lock")
            # Three identical requests on the other instance: its local leader follows the
            # first instance across Redis; the other two follow that local leader.
            followers = await asyncio.gather(*(ask_at(http, second, QUESTION) for _ in range(3)))
            led = await leader

            async def all_counted() -> dict[str, Any] | None:
                # The other instance's counts arrive within its metrics flush interval.
                metrics = (await http.get(f"{first.base_url}/v1/metrics")).json()
                return metrics if metrics["requests"] == 4 else None

            metrics = await poll(all_counted, "both instances' counts")
    finally:
        fake_llm.delay = 0.0
        plain.close()
    assert led.json()["match"] == "miss"
    for response in followers:
        body = response.json()
        assert body["match"] == "exact", body
        assert response.headers["x-sentinel-waited"] == "true"
        assert body["saved_usd"] == led.json()["cost_usd"]
    latencies = [response.json()["latency_ms"] for response in followers]
    assert len(set(latencies)) == 3, latencies  # each its own, not the local leader's copied
    assert fake_llm.call_count == 1
    assert metrics["requests"] == 4
    assert metrics["exact_hits"] == 3  # each follower counted, not only the local leader
    assert metrics["misses"] == 1


async def ask_at(http: httpx.AsyncClient, sentinel: SentinelProcess, prompt: str) -> httpx.Response:
    return await http.post(f"{sentinel.base_url}/v1/query", json={"prompt": prompt})
