"""API keys and tenants: isolation, 401s, both headers, open mode, hashed storage, rate limits."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis
from redis.asyncio import Redis as AsyncRedis

from app.cache.apikeys import KEY_PREFIX
from app.cache.ratelimit import RateLimiter
from app.settings import Settings
from tests.fakes.openai_server import FakeOpenAI
from tests.integration.api import ask, assert_error, bearer, create_key
from tests.integration.conftest import SentinelProcess, app_client

pytestmark = pytest.mark.integration

KEY_A = "sk-test-team-a-5f0c2a9e41b7d8c3a6e1f0b9"
KEY_B = "sk-test-team-b-9b1e7c3d5a2f4e6b8c0d1a3f"
ADMIN = "admin-test-7d3f9a1c5e8b2d4f6a0c"
KEYS = f"{KEY_A}=team-a,{KEY_B}=team-b"

QUESTION = "What is the boiling point of water at sea level?"
QUESTION_2 = "How can I stop being so hard on myself?"
PARAPHRASE_2 = "How do I stop being so hard on myself?"


def x_api_key(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


async def test_a_key_is_required_once_keys_are_configured(
    make_settings: Callable[..., Settings], fake_llm: FakeOpenAI
) -> None:
    async with app_client(make_settings(sentinel_api_keys=KEYS)) as http:
        missing = await ask(http, QUESTION)
        error = assert_error(missing, 401, "INVALID_API_KEY")
        assert error["type"] == "authentication_error"  # OpenAI SDKs raise AuthenticationError
        assert "Authorization: Bearer" in error["message"]
        assert missing.headers["www-authenticate"].startswith("Bearer")

        for headers in (
            bearer("sk-wrong"),
            x_api_key("sk-wrong"),
            {"Authorization": f"Basic {KEY_A}"},  # not a bearer token
            bearer(KEY_A[:-1]),
            bearer(KEY_A + "x"),
        ):
            bad = await ask(http, QUESTION, headers)
            assert_error(bad, 401, "INVALID_API_KEY")
            assert KEY_A not in bad.text

        # Every /v1 route, not only the cache's.
        for method, path in (
            ("GET", "/v1/models"),
            ("GET", "/v1/metrics"),
            ("POST", "/v1/chat/completions"),
            ("POST", "/v1/cache/lookup"),
        ):
            assert_error(await http.request(method, path, json={}), 401, "INVALID_API_KEY")
        assert fake_llm.call_count == 0

        # /health and the schema stay open, and /health says keys are required.
        health = await http.get("/health")
        assert health.status_code == 200
        assert health.json()["auth"] == "keys"
        assert (await http.get("/schema/openapi.json")).status_code == 200

        # Both header forms work, on both endpoints.
        assert (await ask(http, QUESTION, bearer(KEY_A))).status_code == 200
        assert (await ask(http, QUESTION, x_api_key(KEY_A))).json()["match"] == "exact"
        chat = await http.post(
            "/v1/chat/completions",
            json={
                "model": "llama-3.1-8b-instant",
                "messages": [{"role": "user", "content": QUESTION}],
            },
            headers=x_api_key(KEY_A),
        )
        assert chat.headers["x-sentinel-cache"] == "HIT-EXACT"
        assert (await http.get("/v1/models", headers=bearer(KEY_B))).status_code == 200
    assert fake_llm.call_count == 1


async def test_the_admin_key_is_not_a_tenant_key(
    make_settings: Callable[..., Settings], fake_llm: FakeOpenAI
) -> None:
    async with app_client(make_settings(sentinel_api_keys=KEYS, sentinel_admin_key=ADMIN)) as http:
        assert_error(await ask(http, QUESTION, bearer(ADMIN)), 401, "INVALID_API_KEY")
    assert fake_llm.call_count == 0


async def test_tenants_never_see_each_others_entries(
    make_settings: Callable[..., Settings], fake_llm: FakeOpenAI, redis_url: str
) -> None:
    async with app_client(make_settings(sentinel_api_keys=KEYS, rate_limit_per_minute=0)) as http:
        # Exact: the same question from B is a miss, answered and stored for B.
        first_a = await ask(http, QUESTION, bearer(KEY_A))
        assert first_a.json()["match"] == "miss"
        first_b = await ask(http, QUESTION, x_api_key(KEY_B))
        assert first_b.json()["match"] == "miss"
        assert first_b.json()["entry_id"] != first_a.json()["entry_id"]
        assert fake_llm.call_count == 2
        assert (await ask(http, QUESTION, bearer(KEY_A))).json()["entry_id"] == (
            first_a.json()["entry_id"]
        )
        assert (await ask(http, QUESTION, bearer(KEY_B))).json()["entry_id"] == (
            first_b.json()["entry_id"]
        )

        # Semantic: A's entry never serves B's paraphrase...
        stored = await ask(http, QUESTION_2, bearer(KEY_A))
        assert stored.json()["match"] == "miss"
        lookup_b = await http.post(
            "/v1/cache/lookup", json={"prompt": PARAPHRASE_2}, headers=bearer(KEY_B)
        )
        assert lookup_b.json()["hit"] is False
        paraphrase_b = await ask(http, PARAPHRASE_2, bearer(KEY_B))
        assert paraphrase_b.json()["match"] == "miss"
        assert fake_llm.call_count == 4
        # ...while paraphrases inside a tenant still hit.
        other_a = await ask(http, PARAPHRASE_2, bearer(KEY_A))
        assert other_a.json()["match"] == "semantic", other_a.json()
        assert other_a.json()["entry_id"] == stored.json()["entry_id"]
        assert fake_llm.call_count == 4

        # Open-mode callers (no tenant) cannot exist now; the entries carry their tenant.
        client = redis.Redis.from_url(redis_url)
        try:
            tenants = sorted(
                client.hget(key, "tenant") for key in client.keys("sentinel:*:entry:*")
            )
        finally:
            client.close()
        assert tenants == [b"team-a", b"team-a", b"team-b", b"team-b"]


async def test_open_mode_warns_at_startup_and_in_health(
    start_on: Callable[..., SentinelProcess], redis_url: str
) -> None:
    sentinel = start_on(redis_url)
    sentinel.wait_ready()
    logs = sentinel.wait_for_log("Sentinel runs open")
    (line,) = [line for line in logs.splitlines() if "Sentinel runs open" in line]
    assert '"level":"WARNING"' in line
    async with httpx.AsyncClient(base_url=sentinel.base_url, timeout=10.0) as http:
        assert (await http.get("/health")).json()["auth"] == "open"
        # Open: no key, or any key (an SDK always sends one), is served without a tenant.
        assert (await ask(http, QUESTION)).json()["match"] == "miss"
        assert (await ask(http, QUESTION, bearer("unused"))).json()["match"] == "exact"


async def test_keys_mode_with_only_an_admin_key_serves_created_keys(
    make_settings: Callable[..., Settings], fake_llm: FakeOpenAI
) -> None:
    # Keys mode from the start, before any key exists, is test_fail_closed.py's
    # test_an_admin_key_alone_means_keys_mode_from_the_start.
    async with app_client(make_settings(sentinel_admin_key=ADMIN)) as http:
        key = (await create_key(http, ADMIN, tenant="team-c"))["key"]
        assert (await http.get("/health")).json()["auth"] == "keys"
        assert_error(await ask(http, QUESTION), 401, "INVALID_API_KEY")
        served = await ask(http, QUESTION, bearer(key))
        assert served.json()["match"] == "miss"
        assert fake_llm.call_count == 1


async def test_a_revoked_key_is_refused_and_mode_stays_keys(
    make_settings: Callable[..., Settings], fake_llm: FakeOpenAI
) -> None:
    async with app_client(make_settings(sentinel_admin_key=ADMIN)) as http:
        created = (
            await http.post("/v1/admin/keys", json={"tenant": "team-c"}, headers=x_api_key(ADMIN))
        ).json()
        assert (await ask(http, QUESTION, bearer(created["key"]))).status_code == 200
        revoked = await http.delete(f"/v1/admin/keys/{created['id']}", headers=bearer(ADMIN))
        assert revoked.status_code == 200
        assert revoked.json()["revoked"] is True
        assert_error(await ask(http, QUESTION, bearer(created["key"])), 401, "INVALID_API_KEY")
        # Revoking the last key never opens the cache to everybody.
        assert_error(await ask(http, QUESTION), 401, "INVALID_API_KEY")
        assert (await http.get("/health")).json()["auth"] == "keys"


async def test_keys_are_stored_hashed_only(
    make_settings: Callable[..., Settings], fake_llm: FakeOpenAI, redis_url: str
) -> None:
    async with app_client(make_settings(sentinel_api_keys=KEYS, sentinel_admin_key=ADMIN)) as http:
        created = await create_key(http, ADMIN, tenant="team-c", name="ci", rate_limit_per_minute=5)
        raw = created["key"]
        assert raw.startswith(KEY_PREFIX)
        assert len(raw) >= len(KEY_PREFIX) + 43  # 32 random bytes, base64url
        for key in (raw, KEY_A):
            assert (await ask(http, QUESTION, bearer(key))).status_code == 200
        listing = await http.get("/v1/admin/keys", headers=bearer(ADMIN))
        assert raw not in listing.text
        assert KEY_A not in listing.text

    secrets = [s.encode() for s in (raw, raw.removeprefix(KEY_PREFIX), KEY_A, KEY_B, ADMIN)]
    client = redis.Redis.from_url(redis_url)
    try:
        seen = []
        for key in client.scan_iter(count=1000):
            seen.append(key)
            kind = client.type(key)
            values: list[bytes] = {
                b"hash": lambda k: [v for pair in client.hgetall(k).items() for v in pair],
                b"string": lambda k: [client.get(k)],
                b"set": lambda k: list(client.smembers(k)),
                b"list": lambda k: client.lrange(k, 0, -1),
                b"zset": lambda k: client.zrange(k, 0, -1),
            }[kind](key)
            for blob in [key, *values]:
                assert blob is not None
                for secret in secrets:
                    assert secret not in blob, (key, kind)
        assert any(key.startswith(b"sentinel:apikey:") for key in seen)
    finally:
        client.close()


async def test_rate_limit_answers_429_with_retry_after(
    make_settings: Callable[..., Settings], fake_llm: FakeOpenAI
) -> None:
    settings = make_settings(
        sentinel_api_keys=KEYS, sentinel_admin_key=ADMIN, rate_limit_per_minute=3
    )
    async with app_client(settings) as http:
        for _ in range(3):
            assert (await http.get("/v1/models", headers=bearer(KEY_A))).status_code == 200
        limited = await http.get("/v1/models", headers=x_api_key(KEY_A))
        error = assert_error(limited, 429, "RATE_LIMITED")
        assert error["type"] == "rate_limit_error"
        assert 1 <= int(limited.headers["retry-after"]) <= 120
        # Another key has its own budget; the limited key stays limited (refusals are free).
        assert (await http.get("/v1/models", headers=bearer(KEY_B))).status_code == 200
        assert (await http.get("/v1/models", headers=bearer(KEY_A))).status_code == 429

        # Per-key limits set at creation: 1 per minute, and 0 = none.
        one = (await create_key(http, ADMIN, tenant="t1", rate_limit_per_minute=1))["key"]
        unlimited = (await create_key(http, ADMIN, tenant="t2", rate_limit_per_minute=0))["key"]
        assert (await http.get("/v1/models", headers=bearer(one))).status_code == 200
        assert (await http.get("/v1/models", headers=bearer(one))).status_code == 429
        for _ in range(6):
            assert (await http.get("/v1/models", headers=bearer(unlimited))).status_code == 200
        # The admin routes are not rate limited.
        for _ in range(4):
            assert (await http.get("/v1/admin/keys", headers=bearer(ADMIN))).status_code == 200


def test_rate_limit_is_shared_by_two_instances(
    start_on: Callable[..., SentinelProcess], redis_url: str
) -> None:
    settings = {"SENTINEL_API_KEYS": KEYS, "RATE_LIMIT_PER_MINUTE": "4"}
    first, second = start_on(redis_url, **settings), start_on(redis_url, **settings)
    first.wait_ready()
    second.wait_ready()

    def models(sentinel: SentinelProcess, key: str = KEY_A) -> httpx.Response:
        return httpx.get(f"{sentinel.base_url}/v1/models", headers=bearer(key), timeout=10.0)

    assert [models(s).status_code for s in (first, second, first, second)] == [200] * 4
    for sentinel in (first, second):
        limited = models(sentinel)
        assert limited.status_code == 429, limited.text
        assert limited.json()["error"]["code"] == "RATE_LIMITED"
        assert int(limited.headers["retry-after"]) >= 1
    assert models(second, KEY_B).status_code == 200


async def test_sliding_window_lets_requests_through_after_retry_after(redis_url: str) -> None:
    client = AsyncRedis.from_url(redis_url)
    try:
        limiter = RateLimiter(client, window_seconds=1)
        decisions = [await limiter.hit("bucket", 2) for _ in range(3)]
        assert [d.allowed for d in decisions] == [True, True, False]
        assert [d.remaining for d in decisions[:2]] == [1, 0]
        wait = decisions[2].retry_after
        assert 1 <= wait <= 2
        await asyncio.sleep(wait)
        assert (await limiter.hit("bucket", 2)).allowed
        # Concurrent requests never take more slots than the limit.
        burst = await asyncio.gather(*(limiter.hit("burst", 5) for _ in range(20)))
        assert sum(d.allowed for d in burst) == 5
    finally:
        await client.aclose()


async def test_no_route_that_touches_entries_crosses_tenants(
    make_settings: Callable[..., Settings], fake_llm: FakeOpenAI
) -> None:
    settings = make_settings(
        sentinel_api_keys=KEYS, sentinel_admin_key=ADMIN, rate_limit_per_minute=0
    )
    model = "groq/llama-3.1-8b-instant"

    def chat(prompt: str, *, stream: bool = False) -> dict[str, Any]:
        return {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": stream}

    async with app_client(settings) as http:
        # /v1/query: A's entry is a miss for B (exact and paraphrase alike).
        stored = await ask(http, QUESTION_2, bearer(KEY_A))
        assert stored.json()["match"] == "miss"
        assert (await ask(http, PARAPHRASE_2, bearer(KEY_B))).json()["match"] == "miss"
        assert fake_llm.call_count == 2

        # /v1/chat/completions, plain and streamed: A's answers never reach B.
        a_chat = await http.post("/v1/chat/completions", json=chat(QUESTION), headers=bearer(KEY_A))
        assert a_chat.headers["x-sentinel-cache"] == "MISS"
        b_chat = await http.post("/v1/chat/completions", json=chat(QUESTION), headers=bearer(KEY_B))
        assert b_chat.headers["x-sentinel-cache"] == "MISS"
        streamed = "Which metal melts at the lowest temperature?"
        for key in (KEY_A, KEY_B):
            async with http.stream(
                "POST",
                "/v1/chat/completions",
                json=chat(streamed, stream=True),
                headers=bearer(key),
            ) as response:
                assert response.headers["x-sentinel-cache"] == "MISS"
                assert "[DONE]" in (await response.aread()).decode()
        again = await http.post("/v1/chat/completions", json=chat(streamed), headers=bearer(KEY_A))
        assert again.headers["x-sentinel-cache"] == "HIT-EXACT"  # A's own, still there
        assert fake_llm.call_count == 6

        # Cache-aside: what A stores, only A looks up; B's store does not overwrite it.
        secret = "Where does team A keep its deploy runbook?"
        put_a = await http.post(
            "/v1/cache/store",
            json={"prompt": secret, "response": "team A's private answer"},
            headers=bearer(KEY_A),
        )
        assert put_a.status_code == 201, put_a.text
        for prompt in (secret, "Where does team A keep the deploy runbook?"):
            lookup_b = await http.post(
                "/v1/cache/lookup", json={"prompt": prompt}, headers=bearer(KEY_B)
            )
            assert lookup_b.json()["hit"] is False, lookup_b.json()
        put_b = await http.post(
            "/v1/cache/store",
            json={"prompt": secret, "response": "team B's answer"},
            headers=bearer(KEY_B),
        )
        assert put_b.status_code == 201, put_b.text
        lookup_a = await http.post(
            "/v1/cache/lookup", json={"prompt": secret}, headers=bearer(KEY_A)
        )
        assert lookup_a.json()["hit"] is True
        assert "team A's private answer" in lookup_a.text
        assert "team B" not in lookup_a.text

        # Admin routes: a tenant's key is not the admin key, for listing and for deleting.
        entry_a = stored.json()["entry_id"]
        for method, path in (
            ("GET", "/v1/cache/entries"),
            ("GET", "/v1/cache/entries?tenant=team-a"),
            ("GET", f"/v1/cache/entries/{entry_a}"),
            ("DELETE", f"/v1/cache/entries/{entry_a}"),
            ("DELETE", "/v1/cache?tenant=team-a"),
            ("POST", "/v1/cache/flush"),
            ("GET", "/v1/admin/keys"),
        ):
            for key in (KEY_A, KEY_B):
                refused = await http.request(method, path, headers=bearer(key))
                assert_error(refused, 401, "INVALID_API_KEY")
        # Nothing was deleted by those: A's entry still answers A.
        assert (await ask(http, QUESTION_2, bearer(KEY_A))).json()["match"] == "exact"
        # The admin sees each tenant's entries apart.
        listing = await http.get(
            "/v1/cache/entries", params={"tenant": "team-b"}, headers=bearer(ADMIN)
        )
        assert listing.status_code == 200, listing.text
        assert {entry["tenant"] for entry in listing.json()["data"]} == {"team-b"}
        assert entry_a not in {entry["id"] for entry in listing.json()["data"]}
