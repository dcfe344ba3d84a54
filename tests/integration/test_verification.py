"""Live verification and feedback (issue 13): a wrong semantic hit is caught and stops."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from app.settings import Settings
from tests.fakes.openai_server import FakeOpenAI
from tests.integration.conftest import app_client

pytestmark = pytest.mark.integration

QUESTION = "How can I stop being so hard on myself?"
PARAPHRASE = "How do I stop being so hard on myself?"
KEYS = "sk-verify-team-a-0123456789=team-a,sk-verify-team-b-0123456789=team-b"
A = {"Authorization": "Bearer sk-verify-team-a-0123456789"}
B = {"Authorization": "Bearer sk-verify-team-b-0123456789"}


async def ask(http: httpx.AsyncClient, prompt: str, headers: dict[str, str]) -> dict[str, Any]:
    response = await http.post("/v1/query", json={"prompt": prompt}, headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def estimate(http: httpx.AsyncClient, headers: dict[str, str], checked: int) -> Any:
    """The caller's wrong-hit rows once `checked` semantic hits were verified (polled)."""
    deadline = time.monotonic() + 10
    while True:
        rows = (await http.get("/v1/metrics", headers=headers)).json()["wrong_hits"]
        if sum(row["checked"] for row in rows) >= checked:
            return rows
        assert time.monotonic() < deadline, rows
        await asyncio.sleep(0.05)


async def test_verification_catches_a_planted_wrong_hit_and_the_pair_stops_hitting(
    make_settings: Callable[..., Settings], fake_llm: FakeOpenAI
) -> None:
    settings = make_settings(sentinel_api_keys=KEYS, verify_sample_rate=1.0)
    async with app_client(settings) as http:
        # A wrong answer planted under the question (as a bad upstream answer would be).
        planted = await http.post(
            "/v1/cache/store",
            json={"prompt": QUESTION, "response": "The capital of Australia is Canberra."},
            headers=A,
        )
        assert planted.status_code == 201, planted.text
        wrong = await ask(http, PARAPHRASE, A)
        assert wrong["match"] == "semantic"  # served: the cache cannot know yet
        assert wrong["response"] == "The capital of Australia is Canberra."
        assert fake_llm.call_count == 0  # the client did not wait for any provider call

        rows = await estimate(http, A, checked=1)
        assert [(r["tenant"], r["checked"], r["disagreed"]) for r in rows] == [("team-a", 1, 1)]
        assert rows[0]["rate"] == 1.0
        assert 0 < rows[0]["low"] < rows[0]["high"] <= 1.0
        assert fake_llm.call_count == 1  # the verification, in the background

        # The pair stops hitting: the paraphrase now gets the provider's answer, kept under
        # its own entry by the verification, never the planted one.
        again = await ask(http, PARAPHRASE, A)
        assert again["entry_id"] != wrong["entry_id"]
        assert again["response"] == f"answer to: {PARAPHRASE}"
        assert again["match"] == "exact"
        # The planted entry still answers its own question (exact hits are not in question).
        assert (await ask(http, QUESTION, A))["entry_id"] == wrong["entry_id"]
        # Another tenant sees none of team-a's figures.
        assert (await http.get("/v1/metrics", headers=B)).json()["wrong_hits"] == []


async def test_an_agreeing_answer_is_counted_and_keeps_hitting(
    make_settings: Callable[..., Settings], fake_llm: FakeOpenAI
) -> None:
    settings = make_settings(sentinel_api_keys=KEYS, verify_sample_rate=1.0)
    async with app_client(settings) as http:
        assert (await ask(http, QUESTION, A))["match"] == "miss"
        first = await ask(http, PARAPHRASE, A)
        assert first["match"] == "semantic"
        rows = await estimate(http, A, checked=1)
        assert (rows[0]["checked"], rows[0]["disagreed"], rows[0]["rate"]) == (1, 0, 0.0)
        assert rows[0]["high"] < 1.0
        assert (await ask(http, PARAPHRASE, A))["entry_id"] == first["entry_id"]


async def test_feedback_stops_a_wrong_semantic_hit_for_that_tenant_only(
    make_settings: Callable[..., Settings], fake_llm: FakeOpenAI
) -> None:
    async with app_client(make_settings(sentinel_api_keys=KEYS)) as http:
        stored = await ask(http, QUESTION, A)
        served = await ask(http, PARAPHRASE, A)
        assert served["match"] == "semantic"
        entry_id = served["entry_id"]
        # Another tenant cannot judge (or learn of) team-a's entry.
        foreign = await http.post(
            "/v1/feedback", json={"entry_id": entry_id, "correct": False}, headers=B
        )
        assert foreign.status_code == 404, foreign.text
        assert foreign.json()["error"]["code"] == "ENTRY_NOT_FOUND"
        liked = await http.post(
            "/v1/feedback",
            json={"entry_id": entry_id, "prompt": QUESTION, "correct": True},
            headers=A,
        )
        assert liked.json() == {"entry_id": entry_id, "action": "recorded"}
        down = await http.post(
            "/v1/feedback",
            json={"entry_id": entry_id, "prompt": PARAPHRASE, "correct": False},
            headers=A,
        )
        assert down.status_code == 200, down.text
        assert down.json()["action"] == "disputed"
        after = await ask(http, PARAPHRASE, A)
        assert after["match"] == "miss"  # no longer served from the disputed entry
        assert (await ask(http, QUESTION, A))["entry_id"] == stored["entry_id"]
        rows = (await http.get("/v1/metrics", headers=A)).json()["wrong_hits"]
        assert [(r["feedback_correct"], r["feedback_wrong"]) for r in rows] == [(1, 1)]
        bad = await http.post("/v1/feedback", json={"entry_id": "x y", "correct": False}, headers=A)
        assert bad.status_code == 400
