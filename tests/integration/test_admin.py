"""Admin routes: the admin key, API keys, listing, reading and deleting cache entries."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import redis
from redis.asyncio import Redis as AsyncRedis

from app.cache.store import CacheStore, new_entry
from app.settings import Settings
from tests.fakes.openai_server import FakeOpenAI
from tests.integration.api import assert_error, bearer, create_key
from tests.integration.conftest import app_client

pytestmark = pytest.mark.integration

KEY_A = "sk-test-team-a-5f0c2a9e41b7d8c3a6e1f0b9"
KEY_B = "sk-test-team-b-9b1e7c3d5a2f4e6b8c0d1a3f"
ADMIN = "admin-test-7d3f9a1c5e8b2d4f6a0c"
KEYS = f"{KEY_A}=team-a,{KEY_B}=team-b"

BOILING = "What is the boiling point of water at sea level?"
HARD = "How can I stop being so hard on myself?"
HARD_PARAPHRASE = "How do I stop being so hard on myself?"
CAPITAL = "What is the capital city of Australia?"
BIG_MODEL = "llama-3.3-70b-versatile"
DEFAULT_MODEL_ID = "groq/llama-3.1-8b-instant"

ADMIN_GETS = ["/v1/admin/keys", "/v1/cache/entries", "/v1/cache/entries/0123abcd"]


@pytest.fixture
async def http(
    make_settings: Callable[..., Settings], fake_llm: FakeOpenAI
) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(
        sentinel_api_keys=KEYS, sentinel_admin_key=ADMIN, rate_limit_per_minute=0
    )
    async with app_client(settings) as client:
        yield client


async def ask(
    http: httpx.AsyncClient, key: str, prompt: str, model: str | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": prompt}
    if model:
        body["model"] = model
    response = await http.post("/v1/query", json=body, headers=bearer(key))
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def test_admin_routes_are_disabled_without_an_admin_key(
    make_settings: Callable[..., Settings],
) -> None:
    async with app_client(make_settings(sentinel_api_keys=KEYS)) as client:
        for path in ADMIN_GETS:
            for headers in ({}, bearer(KEY_A)):
                message = assert_error(
                    await client.get(path, headers=headers), 403, "ADMIN_DISABLED"
                )["message"]
                assert "SENTINEL_ADMIN_KEY" in message
        assert_error(await client.post("/v1/cache/flush"), 403, "ADMIN_DISABLED")


async def test_admin_routes_need_the_admin_key(http: httpx.AsyncClient) -> None:
    for path in ADMIN_GETS:
        for headers in ({}, bearer(KEY_A), bearer("sk-wrong"), {"X-API-Key": ADMIN[:-1]}):
            response = await http.get(path, headers=headers)
            message = assert_error(response, 401, "INVALID_API_KEY")["message"]
            assert "SENTINEL_ADMIN_KEY" in message
    for method, path in (
        ("POST", "/v1/admin/keys"),
        ("DELETE", "/v1/admin/keys/key_0"),
        ("DELETE", "/v1/cache/entries/abc"),
        ("DELETE", "/v1/cache?tenant=team-a"),
        ("POST", "/v1/cache/flush"),
    ):
        response = await http.request(method, path, headers=bearer(KEY_B), json={"tenant": "x"})
        assert_error(response, 401, "INVALID_API_KEY")
    # Both header forms carry the admin key.
    assert (await http.get("/v1/admin/keys", headers=bearer(ADMIN))).status_code == 200
    assert (await http.get("/v1/admin/keys", headers={"X-API-Key": ADMIN})).status_code == 200


async def test_create_list_and_revoke_keys(http: httpx.AsyncClient) -> None:
    created = await http.post(
        "/v1/admin/keys",
        json={"tenant": "team-c", "name": "batch jobs", "rate_limit_per_minute": 30},
        headers=bearer(ADMIN),
    )
    assert created.status_code == 201, created.text
    new = created.json()
    assert set(new) == {"id", "key", "tenant", "name", "created_at", "rate_limit_per_minute"}
    assert new["tenant"] == "team-c"
    assert new["rate_limit_per_minute"] == 30
    assert (await ask(http, new["key"], BOILING))["match"] == "miss"

    listing = await http.get("/v1/admin/keys", headers=bearer(ADMIN))
    keys = listing.json()["data"]
    assert [(k["tenant"], k["source"]) for k in keys] == [
        ("team-a", "env"),
        ("team-b", "env"),
        ("team-c", "admin"),
    ]
    assert all("key" not in k for k in keys)
    (stored,) = [k for k in keys if k["id"] == new["id"]]
    assert stored == {
        "id": new["id"],
        "tenant": "team-c",
        "name": "batch jobs",
        "created_at": pytest.approx(new["created_at"]),
        "revoked": False,
        "rate_limit_per_minute": 30,
        "source": "admin",
    }

    revoked = await http.delete(f"/v1/admin/keys/{new['id']}", headers=bearer(ADMIN))
    assert revoked.status_code == 200
    assert revoked.json()["revoked"] is True
    again = await http.delete(f"/v1/admin/keys/{new['id']}", headers=bearer(ADMIN))
    assert again.status_code == 200  # revoking twice is harmless
    refused = await http.post("/v1/query", json={"prompt": BOILING}, headers=bearer(new["key"]))
    assert_error(refused, 401, "INVALID_API_KEY")
    listed = (await http.get("/v1/admin/keys", headers=bearer(ADMIN))).json()["data"]
    assert [k["revoked"] for k in listed if k["id"] == new["id"]] == [True]

    assert_error(
        await http.delete("/v1/admin/keys/key_nope", headers=bearer(ADMIN)), 404, "KEY_NOT_FOUND"
    )
    env_id = keys[0]["id"]
    message = assert_error(
        await http.delete(f"/v1/admin/keys/{env_id}", headers=bearer(ADMIN)),
        409,
        "KEY_NOT_REVOCABLE",
    )["message"]
    assert "SENTINEL_API_KEYS" in message


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"tenant": ""},
        {"tenant": "has space"},
        {"tenant": "t" * 65},
        {"tenant": "ok", "rate_limit_per_minute": -1},
        {"tenant": "ok", "colour": "red"},
    ],
)
async def test_bad_key_requests_are_400(http: httpx.AsyncClient, body: dict[str, Any]) -> None:
    response = await http.post("/v1/admin/keys", json=body, headers=bearer(ADMIN))
    assert_error(response, 400, "INVALID_REQUEST")


async def test_list_and_get_entries(http: httpx.AsyncClient, fake_llm: FakeOpenAI) -> None:
    a1 = await ask(http, KEY_A, BOILING)
    await ask(http, KEY_A, HARD)
    await ask(http, KEY_A, CAPITAL, model=BIG_MODEL)
    await ask(http, KEY_B, BOILING)
    await ask(http, KEY_A, BOILING)  # an exact hit: counted on the entry within a second

    everything = (await http.get("/v1/cache/entries", headers=bearer(ADMIN))).json()
    assert everything["total"] == 4
    assert (everything["offset"], everything["limit"]) == (0, 20)
    assert len(everything["data"]) == 4

    team_a = (
        await http.get("/v1/cache/entries", params={"tenant": "team-a"}, headers=bearer(ADMIN))
    ).json()
    assert team_a["total"] == 3
    assert {e["tenant"] for e in team_a["data"]} == {"team-a"}
    assert {e["prompt"] for e in team_a["data"]} == {BOILING, HARD, CAPITAL}

    # A bare model name is routed like a request's: the default provider's.
    for model in (BIG_MODEL, f"groq/{BIG_MODEL}"):
        big = (
            await http.get("/v1/cache/entries", params={"model": model}, headers=bearer(ADMIN))
        ).json()
        assert [e["prompt"] for e in big["data"]] == [CAPITAL]
    both = (
        await http.get(
            "/v1/cache/entries",
            params={"tenant": "team-b", "model": DEFAULT_MODEL_ID},
            headers=bearer(ADMIN),
        )
    ).json()
    assert [(e["tenant"], e["prompt"]) for e in both["data"]] == [("team-b", BOILING)]

    # Paging.
    pages = []
    for offset in (0, 2):
        page = await http.get(
            "/v1/cache/entries", params={"offset": offset, "limit": 2}, headers=bearer(ADMIN)
        )
        pages.append([e["id"] for e in page.json()["data"]])
        assert page.json()["total"] == 4
    assert len(pages[0]) == len(pages[1]) == 2
    assert set(pages[0]).isdisjoint(pages[1])

    one = await http.get(f"/v1/cache/entries/{a1['entry_id']}", headers=bearer(ADMIN))
    assert one.status_code == 200
    entry = one.json()
    assert entry["id"] == a1["entry_id"]
    assert entry["tenant"] == "team-a"
    assert entry["model_id"] == DEFAULT_MODEL_ID
    assert entry["prompt"] == BOILING
    assert entry["response"] == f"answer to: {BOILING}"
    assert entry["tool_calls"] is None
    assert entry["created_at"] > 0
    assert 3500 < entry["ttl"] <= 3600
    assert entry["prompt_tokens"] > 0
    assert "embedding" not in entry
    listed = {e["id"]: e for e in everything["data"]}[a1["entry_id"]]
    assert {k: v for k, v in listed.items() if k not in ("hits", "ttl")} == {
        k: v for k, v in entry.items() if k not in ("hits", "ttl")
    }

    assert_error(
        await http.get("/v1/cache/entries/0123456789abcdef", headers=bearer(ADMIN)),
        404,
        "ENTRY_NOT_FOUND",
    )
    for params in ({"limit": 0}, {"limit": 101}, {"offset": -1}, {"offset": 9990, "limit": 20}):
        response = await http.get("/v1/cache/entries", params=params, headers=bearer(ADMIN))
        assert_error(response, 400, "INVALID_REQUEST")
    assert fake_llm.call_count == 4


async def test_deleting_an_entry_removes_it_from_both_layers(
    http: httpx.AsyncClient, fake_llm: FakeOpenAI, redis_url: str
) -> None:
    boiling = await ask(http, KEY_A, BOILING)
    hard = await ask(http, KEY_A, HARD)
    assert (await ask(http, KEY_A, BOILING))["match"] == "exact"
    assert (await ask(http, KEY_A, HARD_PARAPHRASE))["match"] == "semantic"
    assert fake_llm.call_count == 2

    for answer in (boiling, hard):
        deleted = await http.delete(
            f"/v1/cache/entries/{answer['entry_id']}", headers=bearer(ADMIN)
        )
        assert deleted.status_code == 200
        assert deleted.json()["deleted"] == 1
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.keys("sentinel:*:entry:*") == []
    finally:
        client.close()

    assert (await ask(http, KEY_A, BOILING))["match"] == "miss"  # exact layer
    assert (await ask(http, KEY_A, HARD_PARAPHRASE))["match"] == "miss"  # semantic layer
    assert fake_llm.call_count == 4
    gone = await http.delete(f"/v1/cache/entries/{boiling['entry_id']}", headers=bearer(ADMIN))
    assert gone.status_code == 200  # stored again by the miss above
    assert_error(
        await http.delete(f"/v1/cache/entries/{boiling['entry_id']}", headers=bearer(ADMIN)),
        404,
        "ENTRY_NOT_FOUND",
    )


async def test_invalidate_a_scope_by_tenant_and_by_model(
    http: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    for prompt in (BOILING, HARD):
        await ask(http, KEY_A, prompt)
        await ask(http, KEY_B, prompt)
    await ask(http, KEY_A, CAPITAL, model=BIG_MODEL)
    await ask(http, KEY_B, CAPITAL, model=BIG_MODEL)
    assert fake_llm.call_count == 6

    message = assert_error(
        await http.delete("/v1/cache", headers=bearer(ADMIN)), 400, "INVALID_REQUEST"
    )["message"]
    assert "flush" in message

    by_model = await http.delete("/v1/cache", params={"model": BIG_MODEL}, headers=bearer(ADMIN))
    assert by_model.status_code == 200
    assert by_model.json() == {"deleted": 2, "tenant": None, "model": f"groq/{BIG_MODEL}"}
    assert (await ask(http, KEY_A, CAPITAL, model=BIG_MODEL))["match"] == "miss"

    by_tenant = await http.delete("/v1/cache", params={"tenant": "team-a"}, headers=bearer(ADMIN))
    assert by_tenant.json() == {"deleted": 3, "tenant": "team-a", "model": None}
    assert (await ask(http, KEY_A, BOILING))["match"] == "miss"
    assert (await ask(http, KEY_A, HARD_PARAPHRASE))["match"] == "miss"
    # team-b kept everything of the default model.
    assert (await ask(http, KEY_B, BOILING))["match"] == "exact"
    assert (await ask(http, KEY_B, HARD_PARAPHRASE))["match"] == "semantic"

    both = await http.delete(
        "/v1/cache",
        params={"tenant": "team-b", "model": DEFAULT_MODEL_ID},
        headers=bearer(ADMIN),
    )
    assert both.json()["deleted"] == 2
    assert (await ask(http, KEY_B, BOILING))["match"] == "miss"
    unknown = await http.delete("/v1/cache", params={"model": "nope/x"}, headers=bearer(ADMIN))
    assert_error(unknown, 400, "MODEL_NOT_FOUND")


async def test_scope_invalidation_works_in_batches(http: httpx.AsyncClient, redis_url: str) -> None:
    health = (await http.get("/health")).json()
    client = AsyncRedis.from_url(redis_url)
    try:
        store = CacheStore(
            client,
            embedder_id=health["embedder"],
            dimension=health["embedding_dimension"],
            ef_runtime=10,
        )
        for i in range(1203):  # exact-only entries (no vector) are indexed by their tags too
            entry = new_entry(
                entry_id=f"bulk{i:05d}",
                prompt=f"question {i}",
                response="r",
                model="m",
                scope="s",
                prompt_tokens=1,
                completion_tokens=1,
                tenant="team-z",
                model_id="groq/m",
            )
            await store.put(entry, None, ttl=600)
        assert (await store.search(tenant="team-z")).total == 1203
        assert await store.delete_matching(tenant="team-z", batch=100) == 1203
        assert (await store.search(tenant="team-z")).total == 0
    finally:
        await client.aclose()


async def test_flush_deletes_every_entry_and_keeps_index_and_keys(
    http: httpx.AsyncClient, fake_llm: FakeOpenAI, redis_url: str
) -> None:
    for prompt in (BOILING, HARD, CAPITAL):
        await ask(http, KEY_A, prompt)
    await ask(http, KEY_B, BOILING)
    created = await create_key(http, ADMIN, tenant="team-c")

    flushed = await http.post("/v1/cache/flush", headers=bearer(ADMIN))
    assert flushed.status_code == 200
    assert flushed.json()["deleted"] == 4

    client = redis.Redis.from_url(redis_url)
    try:
        assert client.keys("sentinel:*:entry:*") == []
        assert len(client.execute_command("FT._LIST")) == 1
    finally:
        client.close()
    health = await http.get("/health")
    assert health.json()["index_exists"] is True
    assert (await ask(http, created["key"], BOILING))["match"] == "miss"  # keys survive a flush
    assert (await ask(http, KEY_A, HARD_PARAPHRASE))["match"] == "miss"
    assert (await http.get("/v1/cache/entries", headers=bearer(ADMIN))).json()["total"] == 2


async def test_open_mode_entries_are_listed_without_a_tenant_filter(
    make_settings: Callable[..., Settings], fake_llm: FakeOpenAI
) -> None:
    # Open on purpose: with an admin key alone Sentinel would want keys (SENTINEL_AUTH).
    settings = make_settings(sentinel_admin_key=ADMIN, sentinel_auth="open")
    async with app_client(settings) as client:
        await client.post("/v1/query", json={"prompt": BOILING})
        listing = (await client.get("/v1/cache/entries", headers=bearer(ADMIN))).json()
        assert [(e["tenant"], e["prompt"]) for e in listing["data"]] == [("", BOILING)]
        empty_filter = await client.get(
            "/v1/cache/entries", params={"tenant": ""}, headers=bearer(ADMIN)
        )
        assert empty_filter.json()["total"] == 1
