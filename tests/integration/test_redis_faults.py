"""Redis faults against a real Sentinel process: killed, slow, stopped, full, loading.

Each test runs its own Redis Stack server (its own port and AOF directory), since the tests
kill, pause and restart it; the session's shared `redis_stack` is never touched. Sentinel runs
with a key from SENTINEL_API_KEYS and no rate limit, so admitting a request needs no Redis and
what is measured is the cache's behaviour alone.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pytest

from app.cache import keys
from tests.fakes.openai_server import FakeOpenAI
from tests.integration.api import bearer
from tests.integration.conftest import SentinelProcess
from tests.integration.servers import RedisServer, wait_for

pytestmark = pytest.mark.integration

API_KEY = "sk-faults-0123456789abcdef"
StartSentinel = Callable[[dict[str, str]], SentinelProcess]


StartOn = Callable[..., httpx.Client]


@pytest.fixture
def start(start_sentinel: StartSentinel) -> Iterator[StartOn]:
    """`start(server, llm, **env)`: Sentinel on that Redis and provider, and a client for it."""
    clients: list[httpx.Client] = []

    def start_on(server: RedisServer, llm: FakeOpenAI, **env: str) -> httpx.Client:
        clients.append(sentinel_client(start_sentinel, server, llm, **env))
        return clients[-1]

    yield start_on
    for client in clients:
        client.close()


def sentinel_client(
    start_sentinel: StartSentinel, server: RedisServer, llm: FakeOpenAI, **env: str
) -> httpx.Client:
    """Sentinel on `server` and the fake provider; an HTTP client carrying the API key."""
    process = start_sentinel(
        {
            "REDIS_URL": server.url,
            "GROQ_API_KEY": "test-key",
            "GROQ_BASE_URL": llm.base_url,
            "UPSTREAM_TIMEOUT": "5",
            "SENTINEL_API_KEYS": f"{API_KEY}=faults",
            "RATE_LIMIT_PER_MINUTE": "0",
            "CACHE_PROBE_INTERVAL_MS": "200",
            **env,
        }
    )
    process.wait_ready()
    return httpx.Client(
        base_url=process.base_url,
        headers=bearer(API_KEY),
        timeout=15.0,
    )


def ask(http: httpx.Client, prompt: str) -> httpx.Response:
    response = http.post("/v1/query", json={"prompt": prompt})
    assert response.status_code == 200, response.text
    return response


def cache_of(response: httpx.Response) -> str:
    return response.headers["X-Sentinel-Cache"]


def hit_on(http: httpx.Client, prompt: str) -> httpx.Response | None:
    """The answer if it is an exact hit, else None."""
    response = ask(http, prompt)
    return response if cache_of(response) == "HIT-EXACT" else None


def healthy(http: httpx.Client) -> dict[str, Any] | None:
    """/health's report if its status is ok, else None."""
    report: dict[str, Any] = http.get("/health").json()
    return report if report["status"] == "ok" else None


def entry_prefix(http: httpx.Client) -> str:
    health = http.get("/health").json()
    return keys.entry_prefix(health["embedder"], health["embedding_dimension"])


def test_redis_killed_then_restarted_requests_bypass_then_hit_again(
    redis_server: RedisServer, fake_llm: FakeOpenAI, start: StartOn
) -> None:
    http = start(redis_server, fake_llm)
    stored = "What is the boiling point of water at sea level?"
    first = ask(http, stored)
    assert cache_of(first) == "MISS"
    assert cache_of(ask(http, stored)) == "HIT-EXACT"
    key = keys.entry_key(entry_prefix(http), first.json()["entry_id"])
    plain = redis_server.client()
    ttl_before = plain.ttl(key)
    # Counted in process, written within the metrics' flush interval.
    wait_for(lambda: plain.hget(keys.METRICS_KEY, "requests") == b"2", "the metrics flush")
    plain.close()
    assert 3500 < ttl_before <= 3600

    redis_server.kill()
    calls = fake_llm.call_count
    for i, prompt in enumerate([stored, *(f"Outage question number {i}" for i in range(8))]):
        response = ask(http, prompt)
        assert cache_of(response) == "BYPASS", (i, response.headers)
        assert response.json()["bypass"] is True
        assert response.json()["cache_hit"] is False
    assert fake_llm.call_count == calls + 9  # every one answered by the provider
    health = http.get("/health")
    assert health.status_code == 200  # degraded, but answering: keep it in the pool
    report = health.json()
    assert report["status"] == "degraded"
    assert report["cache"] == "bypass"
    assert report["redis"] == "unreachable"
    assert report["bypassed_answers"] >= 9
    assert any("bypassed" in reason for reason in report["reasons"])
    # Metrics live in Redis: while it is away they say so at once instead of hanging.
    assert http.get("/v1/metrics").status_code == 503

    redis_server.start()  # same directory: the AOF is replayed
    hit = wait_for(
        lambda: hit_on(http, stored), "the entry stored before the kill hits again", timeout=5.0
    )
    assert hit.json()["response"] == first.json()["response"]
    health = wait_for(lambda: healthy(http), "health back to ok", timeout=5.0)
    assert health["cache"] == "on"
    assert health["redis"] == "ok"
    plain = redis_server.client()
    ttl_after = plain.ttl(key)
    plain.close()
    # The TTL survived too (an AOF keeps absolute expiry times): not reset, not lost.
    assert 0 < ttl_after <= ttl_before
    # The outage's nine answers were counted in process and written once Redis was back.
    assert http.get("/v1/metrics").json()["requests"] >= 2 + 9 + 1
    # Caching resumed: a new question is stored again and hit.
    assert cache_of(ask(http, "A question after the restart")) == "MISS"
    assert cache_of(ask(http, "A question after the restart")) == "HIT-EXACT"


def test_slow_redis_is_bypassed_within_the_budget(
    redis_server: RedisServer, fake_llm: FakeOpenAI, start: StartOn
) -> None:
    http = start(redis_server, fake_llm, CACHE_LOOKUP_TIMEOUT_MS="50", CACHE_WRITE_TIMEOUT_MS="200")
    prompt = "How far is the Moon from the Earth?"
    assert cache_of(ask(http, prompt)) == "MISS"
    assert cache_of(ask(http, prompt)) == "HIT-EXACT"
    plain = redis_server.client()
    plain.execute_command("CLIENT", "PAUSE", 2000, "ALL")  # every command waits 2 s
    plain.close()
    started = time.perf_counter()
    response = ask(http, prompt)
    elapsed = time.perf_counter() - started
    assert cache_of(response) == "BYPASS"
    # The lookup's 50 ms (set below), the store's and the metrics' 200 ms each.
    assert elapsed < 1.0, elapsed
    assert response.json()["response"] == f"answer to: {prompt}"
    wait_for(lambda: hit_on(http, prompt), "hits again once Redis answers in time", timeout=5.0)


def test_open_breaker_makes_no_connection_attempts(
    redis_server: RedisServer, fake_llm: FakeOpenAI, start: StartOn
) -> None:
    # A long lookup budget, so a request that still tries Redis is plain to see.
    http = start(redis_server, fake_llm, CACHE_LOOKUP_TIMEOUT_MS="400")
    assert cache_of(ask(http, "Who wrote Middlemarch?")) == "MISS"
    plain = redis_server.client()
    connections_before = int(plain.info("stats")["total_connections_received"])

    redis_server.pause()  # connections are accepted by the kernel, never answered
    try:
        started = time.perf_counter()
        first = ask(http, "Who wrote Middlemarch?")
        assert cache_of(first) == "BYPASS"
        assert time.perf_counter() - started >= 0.4  # it waited out its lookup budget
        assert http.get("/health").json()["cache"] == "bypass"  # that request opened it
        latencies = []
        for i in range(20):
            started = time.perf_counter()
            response = ask(http, f"A question while Redis is stopped, number {i}")
            latencies.append(time.perf_counter() - started)
            assert cache_of(response) == "BYPASS"
    finally:
        redis_server.resume()
    # Straight to the provider: a request that tried Redis would wait out the 400 ms budget.
    assert max(latencies) < 0.4, latencies
    connections = int(plain.info("stats")["total_connections_received"]) - connections_before
    plain.close()
    # The first request's store and metrics writes, and the probe (every 200 ms, each
    # waiting up to 2 s for its PING): nowhere near one per request.
    assert connections <= 6, connections
    wait_for(lambda: hit_on(http, "Who wrote Middlemarch?"), "hits once Redis runs", timeout=5.0)


def test_evictions_under_maxmemory_are_misses_never_errors(
    redis_server: RedisServer, start: StartOn
) -> None:
    # ~3 KB answers, so a small memory bound holds only part of what is asked.
    rng = random.Random(7)
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    words += ["india", "juliet", "kilo", "lima", "mike", "november", "oscar", "papa"]

    def long_answer(body: dict[str, Any]) -> str:
        prompt = str(body["messages"][-1]["content"])
        return f"answer to: {prompt} " + " ".join(rng.choice(words) for _ in range(500))

    with FakeOpenAI(answer=long_answer) as llm:
        http = start(redis_server, llm)
        assert cache_of(ask(http, "warm-up: the first vector allocates the HNSW block")) == "MISS"
        prefix = entry_prefix(http)
        plain = redis_server.client()
        used = int(plain.info("memory")["used_memory"])
        plain.config_set("maxmemory", used + 1024 * 1024)
        plain.config_set("maxmemory-policy", "volatile-lru")  # infra/redis/redis.conf's

        prompts = [
            f"{' '.join(rng.sample(words, 4))} question {i} about {rng.randrange(10**6)}"
            for i in range(240)
        ]
        with ThreadPoolExecutor(max_workers=8) as pool:
            first = list(pool.map(lambda p: http.post("/v1/query", json={"prompt": p}), prompts))
        assert [r.status_code for r in first] == [200] * len(prompts)
        assert int(plain.info("stats")["evicted_keys"]) > 0

        # Entry ids of the answers stored under their own prompt (a paraphrase-like prompt
        # may have been answered from another's entry).
        ids = {
            prompt: response.json()["entry_id"]
            for prompt, response in zip(prompts, first, strict=True)
            if cache_of(response) == "MISS"
        }
        assert len(ids) > len(prompts) // 2
        hits = 0
        # Newest first: LRU kept the last ones stored, and each miss below stores an answer
        # that evicts the least recently used entry; asked oldest first, the survivors would
        # all be evicted before their turn (Redis's LRU clock has a 1 s resolution, so which
        # ones go first was left to chance).
        for prompt, entry_id in reversed(ids.items()):
            key = keys.entry_key(prefix, entry_id)
            evicted = int(plain.info("stats")["evicted_keys"])
            present = plain.hget(key, "response") is not None
            response = http.post("/v1/query", json={"prompt": prompt})
            assert response.status_code == 200, response.text
            # A background write (the metrics' or hit counts' flush) may make Redis evict
            # between the check and the request, and with LRU's 1 s clock the key just read
            # can be the one that goes: then, and only then, a present entry may miss.
            evicted_since = int(plain.info("stats")["evicted_keys"]) > evicted
            if present and not (evicted_since and cache_of(response) == "MISS"):
                assert cache_of(response) == "HIT-EXACT", (prompt, response.headers)
                assert response.json()["response"].startswith(f"answer to: {prompt} ")
                hits += 1
            else:
                assert cache_of(response) != "BYPASS"  # a miss (or a paraphrase), not an error
        assert 0 < hits < len(ids)

        # No half entries: every entry left is whole and still expires.
        for key in plain.scan_iter(match=prefix + "*", count=500):
            fields = plain.hgetall(key)
            if not fields:
                continue  # evicted since the scan saw it
            assert {b"response", b"prompt", b"scope", b"embedding"} <= set(fields), key
            assert plain.ttl(key) > 0, key
        # A hash without its answer (what a hit-count write on an evicted key would leave,
        # were it not guarded) is never served: a miss, and the fresh answer replaces it.
        prompt = next(iter(ids))
        half = keys.entry_key(prefix, ids[prompt])
        plain.delete(half)
        plain.hset(half, "hits", 5)
        response = ask(http, prompt)
        assert cache_of(response) in {"MISS", "HIT-SEMANTIC"}
        if cache_of(response) == "MISS":
            assert plain.hget(half, "response") is not None
        plain.close()


def test_restart_while_the_index_loads_is_degraded_not_failing(
    redis_server: RedisServer, fake_llm: FakeOpenAI, start: StartOn
) -> None:
    # The breaker probes Redis every 50 ms here, so /health reports the loading state within a
    # small part of the replay instead of (at 200 ms) perhaps after it ended.
    http = start(redis_server, fake_llm, CACHE_PROBE_INTERVAL_MS="50")
    stored = "What is the tallest mountain in Africa?"
    assert cache_of(ask(http, stored)) == "MISS"
    # Enough indexed entries that replaying the AOF (an HNSW insert each) takes a second or more
    # (6,000 sometimes replayed between two polls and the loading state was never seen).
    prefix = entry_prefix(http)
    plain = redis_server.client()
    vectors = np.random.default_rng(3).standard_normal((40000, 384)).astype(np.float32)
    pipe = plain.pipeline(transaction=False)
    for i, vector in enumerate(vectors):
        key = f"{prefix}filler{i}"
        pipe.hset(
            key,
            mapping={
                "prompt": f"filler {i}",
                "response": "r",
                "scope": "filler",
                "embedding": vector.tobytes(),
            },
        )
        pipe.expire(key, 3600)
        if i % 2000 == 1999:
            pipe.execute()
    pipe.execute()
    plain.close()
    redis_server.stop()  # SHUTDOWN: the AOF is complete

    loader = threading.Thread(target=redis_server.start, kwargs={"timeout": 60.0})
    loader.start()
    seen: list[tuple[str, str, int]] = []
    try:
        while loader.is_alive():
            response = http.post("/v1/query", json={"prompt": stored})
            report = http.get("/health")
            seen.append((cache_of(response), report.json()["redis"], report.status_code))
            assert response.status_code == 200, response.text
            time.sleep(0.05)
    finally:
        loader.join()
    assert all(status == 200 for *_, status in seen)
    assert ("BYPASS", "loading", 200) in seen, seen  # served and reported, not failed
    wait_for(lambda: hit_on(http, stored), "hits once the data is loaded", timeout=5.0)
    health = wait_for(lambda: healthy(http), "health back to ok", timeout=5.0)
    assert health["index_percent_indexed"] == 1.0


def test_open_mode_and_known_keys_keep_working_while_redis_is_away(
    redis_server: RedisServer, start_on: Callable[..., SentinelProcess]
) -> None:
    # Open mode (no SENTINEL_API_KEYS): admitting a request must not need Redis.
    open_process = start_on(redis_server.url, CACHE_PROBE_INTERVAL_MS="200")
    open_process.wait_ready()
    # A keyed instance on the same Redis, with a key created by the admin API and a limit.
    keyed_process = start_on(
        redis_server.url,
        CACHE_PROBE_INTERVAL_MS="200",
        SENTINEL_ADMIN_KEY="admin-key-for-fault-tests",
        RATE_LIMIT_PER_MINUTE="1000",
    )
    keyed_process.wait_ready()
    with (
        httpx.Client(base_url=open_process.base_url, timeout=15) as anyone,
        httpx.Client(base_url=keyed_process.base_url, timeout=15) as admin,
    ):
        assert cache_of(ask(anyone, "Open mode question")) == "MISS"
        created = admin.post(
            "/v1/admin/keys",
            json={"tenant": "acme"},
            headers={"X-API-Key": "admin-key-for-fault-tests"},
        )
        assert created.status_code == 201, created.text
        tenant_key = bearer(created.json()["key"])
        assert (
            admin.post("/v1/query", json={"prompt": "Keyed"}, headers=tenant_key).status_code == 200
        )

        redis_server.kill()
        answered = ask(anyone, "Open mode during the outage")
        assert cache_of(answered) == "BYPASS"
        keyed = admin.post("/v1/query", json={"prompt": "Keyed, outage"}, headers=tenant_key)
        assert keyed.status_code == 200, keyed.text  # seen valid minutes ago: still admitted
        assert cache_of(keyed) == "BYPASS"
        # Keys mode does not fall back to open: no key, or an unknown one, is still refused.
        assert admin.post("/v1/query", json={"prompt": "x"}).status_code == 401
        unknown = admin.post("/v1/query", json={"prompt": "x"}, headers=bearer("sk-nope"))
        # Never admitted: Redis, which would know the key, cannot be asked.
        assert unknown.status_code == 503, unknown.text
        assert unknown.json()["error"]["code"] == "CACHE_UNAVAILABLE"
