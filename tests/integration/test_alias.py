"""Paraphrase aliases on the real Redis Stack: a repeated paraphrase skips the embedding, and
an alias never outlives, crosses or overrules what its entry allows."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis.asyncio as redis

from app.settings import Settings
from tests.fakes.openai_server import FakeOpenAI
from tests.integration.conftest import app_client

pytestmark = pytest.mark.integration

QUESTION = "How can I stop being so hard on myself?"
PARAPHRASE = "How do I stop being so hard on myself?"
KEYS = "sk-alias-team-a-0123456789=team-a,sk-alias-team-b-0123456789=team-b"
A = {"Authorization": "Bearer sk-alias-team-a-0123456789"}
B = {"Authorization": "Bearer sk-alias-team-b-0123456789"}
ADMIN_KEY = "admin-alias-7d3f9a1c5e8b2d4f6a0c"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


async def ask(http: httpx.AsyncClient, prompt: str, headers: dict[str, str]) -> dict[str, Any]:
    response = await http.post("/v1/query", json={"prompt": prompt}, headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def layer_count(http: httpx.AsyncClient, layer: str) -> int:
    layers = (await http.get("/v1/metrics/layers", headers=ADMIN)).json()["latency_ms"]
    count: int = layers[layer]["count"]
    return count


async def aliases_written(redis_url: str, at_least: int) -> None:
    """Poll until `at_least` alias keys exist (they are written after the answer)."""
    client = redis.Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + 10
        while len([k async for k in client.scan_iter(match="sentinel:*:alias:*")]) < at_least:
            assert time.monotonic() < deadline, "no alias written"
            await asyncio.sleep(0.02)
    finally:
        await client.aclose()


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(sentinel_api_keys=KEYS, sentinel_admin_key=ADMIN_KEY)


async def test_a_repeated_paraphrase_is_a_semantic_hit_without_an_embedding(
    settings: Settings, redis_url: str, fake_llm: FakeOpenAI
) -> None:
    async with app_client(settings) as http:
        assert (await ask(http, QUESTION, A))["match"] == "miss"
        embeds = await layer_count(http, "embed")
        first = await ask(http, PARAPHRASE, A)
        assert first["match"] == "semantic"
        assert await layer_count(http, "embed") == embeds + 1
        await aliases_written(redis_url, 1)

        response = await http.post(
            "/v1/chat/completions",
            json={"model": "groq/llama-3.1-8b-instant",
                  "messages": [{"role": "user", "content": PARAPHRASE}]},
            headers=A,
        )  # fmt: skip
        assert response.headers["X-Sentinel-Cache"] == "HIT-SEMANTIC"
        again = await ask(http, PARAPHRASE, A)
        assert (again["match"], again["entry_id"], again["matched_prompt"]) == (
            "semantic",
            first["entry_id"],
            QUESTION,
        )
        assert again["similarity"] == first["similarity"]
        assert await layer_count(http, "embed") == embeds + 1  # neither repeat embedded
        assert await layer_count(http, "alias") == 2
        assert fake_llm.call_count == 1
        # Counted as semantic hits (the metrics reach Redis within their flush interval).
        deadline = time.monotonic() + 10
        while (metrics := (await http.get("/v1/metrics", headers=A)).json())["semantic_hits"] < 3:
            assert time.monotonic() < deadline, metrics
            await asyncio.sleep(0.05)
        assert metrics["semantic_hits"] == 3


async def test_an_alias_never_crosses_tenants(
    settings: Settings, redis_url: str, fake_llm: FakeOpenAI
) -> None:
    async with app_client(settings) as http:
        await ask(http, QUESTION, A)
        assert (await ask(http, PARAPHRASE, A))["match"] == "semantic"
        await aliases_written(redis_url, 1)
        # Team B asks the same paraphrase: neither team-a's alias nor its entry serve it.
        assert (await ask(http, PARAPHRASE, B))["match"] == "miss"
        assert (await layer_count(http, "alias")) == 0


async def test_deleting_the_entry_stops_its_aliases(
    settings: Settings, redis_url: str, fake_llm: FakeOpenAI
) -> None:
    async with app_client(settings) as http:
        await ask(http, QUESTION, A)
        served = await ask(http, PARAPHRASE, A)
        await aliases_written(redis_url, 1)
        deleted = await http.delete(f"/v1/cache/entries/{served['entry_id']}", headers=ADMIN)
        assert deleted.json()["deleted"] == 1, deleted.text
        after = await ask(http, PARAPHRASE, A)
        assert after["match"] == "miss"
        assert after["response"] == f"answer to: {PARAPHRASE}"
        assert await layer_count(http, "alias") == 0


async def test_feedback_against_the_hit_stops_its_alias(
    settings: Settings, redis_url: str, fake_llm: FakeOpenAI
) -> None:
    async with app_client(settings) as http:
        await ask(http, QUESTION, A)
        served = await ask(http, PARAPHRASE, A)
        await aliases_written(redis_url, 1)
        down = await http.post(
            "/v1/feedback",
            json={"entry_id": served["entry_id"], "prompt": PARAPHRASE, "correct": False},
            headers=A,
        )
        assert down.json()["action"] == "disputed"
        after = await ask(http, PARAPHRASE, A)
        assert after["match"] == "miss"  # the alias is refused, as the entry is
        assert await layer_count(http, "alias") == 0
        # The entry still answers its own question.
        assert (await ask(http, QUESTION, A))["entry_id"] == served["entry_id"]


async def test_with_the_alias_off_every_paraphrase_is_embedded(
    make_settings: Callable[..., Settings], redis_url: str
) -> None:
    settings = make_settings(
        sentinel_api_keys=KEYS, sentinel_admin_key=ADMIN_KEY, paraphrase_alias=False
    )
    async with app_client(settings) as http:
        await ask(http, QUESTION, A)
        embeds = await layer_count(http, "embed")
        for _ in range(3):
            assert (await ask(http, PARAPHRASE, A))["match"] == "semantic"
        assert await layer_count(http, "embed") == embeds + 3
        assert await layer_count(http, "alias") == 0
    client = redis.Redis.from_url(redis_url)
    try:
        assert [k async for k in client.scan_iter(match="sentinel:*:alias:*")] == []
    finally:
        await client.aclose()
