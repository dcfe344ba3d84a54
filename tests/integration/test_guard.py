"""The hit guard in the request path: it rejects a near miss that the cosine alone would serve."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis

from app.settings import Settings
from tests.fakes.openai_server import FakeOpenAI
from tests.integration.conftest import app_client

pytestmark = pytest.mark.integration

STORED = "When was Albert Einstein born?"
# Cosine 0.64 with the tuned embedder (ft2; 0.83 with ft1): below the floor, so refused before
# the guard is asked.
NEAR_MISS = "Where was Albert Einstein born?"
# Cosine 0.81 with the tuned embedder, guard 0.44: the cosine alone would serve it.
COSINE_NEAR_MISS = "When did Albert Einstein die?"
PARAPHRASE = "When was Albert Einstein born exactly?"  # cosine 0.97


@pytest.fixture(autouse=True)
def empty_cache(redis_url: str) -> None:
    redis.Redis.from_url(redis_url).flushdb()


async def test_guard_rejects_a_near_miss_and_keeps_a_paraphrase(
    make_settings: Callable[..., Settings], fake_llm: FakeOpenAI
) -> None:
    # The guard deciding alone (the verifier's cascade has its own test below).
    async with app_client(make_settings(verifier="off")) as http:
        health = (await http.get("/health")).json()
        assert health["guard"] == "on"
        assert health["similarity_threshold"] == 0.7
        assert health["guard_threshold"] == 0.8

        assert (await http.post("/v1/query", json={"prompt": STORED})).json()["match"] == "miss"
        near = (await http.post("/v1/query", json={"prompt": NEAR_MISS})).json()
        assert near["match"] == "miss"  # "where" is not "when"
        assert near["guard_score"] is None

        hit = (await http.post("/v1/query", json={"prompt": PARAPHRASE})).json()
        assert hit["match"] == "semantic", hit
        assert hit["matched_prompt"] == STORED
        assert hit["guard_score"] >= 0.8
    assert fake_llm.call_count == 2  # STORED and NEAR_MISS; the paraphrase was a hit


async def test_without_the_guard_the_cosine_alone_serves_the_near_miss(
    make_settings: Callable[..., Settings], fake_llm: FakeOpenAI
) -> None:
    settings = make_settings(guard="off", similarity_threshold=0.75)
    async with app_client(settings) as http:
        assert (await http.get("/health")).json()["guard"] == "off"
        await http.post("/v1/query", json={"prompt": STORED})
        near = (await http.post("/v1/query", json={"prompt": COSINE_NEAR_MISS})).json()
        assert near["match"] == "semantic"  # the wrong answer the guard exists to stop
        assert near["matched_prompt"] == STORED
        assert near["similarity"] >= 0.75
        assert near["guard_score"] is None
    assert fake_llm.call_count == 1
    # With the guard (and nothing after it), the same near miss is refused.
    redis.Redis.from_url(settings.redis_url).flushdb()
    async with app_client(make_settings(verifier="off", similarity_threshold=0.75)) as http:
        await http.post("/v1/query", json={"prompt": STORED})
        near = (await http.post("/v1/query", json={"prompt": COSINE_NEAR_MISS})).json()
        assert near["match"] == "miss"
    assert fake_llm.call_count == 3


@pytest.mark.parametrize("verifier", ["checks", "overlap", "on"])
async def test_near_misses_with_changed_numbers_or_order_are_refused_and_a_paraphrase_served(
    make_settings: Callable[..., Settings], fake_llm: FakeOpenAI, verifier: str
) -> None:
    async with app_client(make_settings(verifier=verifier)) as http:
        health = (await http.get("/health")).json()
        assert health["verifier"] == verifier
        stored = "What was the population of Canada in 2015?"
        assert (await http.post("/v1/query", json={"prompt": stored})).json()["match"] == "miss"
        changed = await http.post(
            "/v1/query", json={"prompt": "What was the population of Canada in 2016?"}
        )
        assert changed.json()["match"] == "miss"  # another year, another answer
        swapped_first = "Is Rust faster than Go?"
        await http.post("/v1/query", json={"prompt": swapped_first})
        swapped = await http.post("/v1/query", json={"prompt": "Is Go faster than Rust?"})
        assert swapped.json()["match"] == "miss"
        asked, paraphrase = (
            "How can I stop being so hard on myself?",
            "How do I stop being so hard on myself?",
        )
        await http.post("/v1/query", json={"prompt": asked})
        # Nearly the same words (overlap 0.8): with VERIFIER=overlap the verifier reads it too.
        if verifier in ("on", "overlap"):
            # A request's own budget: 0 maps to the strictest threshold the calibration knows.
            strict = await http.post(
                "/v1/query",
                json={"prompt": paraphrase, "max_wrong_hit_rate": 0.0},
                headers={"Cache-Control": "no-store"},
            )
            assert strict.json()["match"] == "miss"
        hit = (await http.post("/v1/query", json={"prompt": paraphrase})).json()
        assert hit["match"] == "semantic", hit
        assert hit["matched_prompt"] == asked
        if verifier in ("on", "overlap"):
            assert hit["verifier_score"] >= health["verify_threshold"]
        else:
            assert hit["verifier_score"] is None
            assert health["verify_threshold"] is None


async def test_with_verifier_overlap_a_budget_also_reaches_hits_the_verifier_does_not_read(
    make_settings: Callable[..., Settings], fake_llm: FakeOpenAI
) -> None:
    # Few shared words (overlap 0.33, under the gate): the guard alone decides this paraphrase
    # (0.91 with ft2). A strict budget must still refuse it, a looser one serve it.
    asked = "How do I learn to play the guitar?"
    paraphrase = "What is the best way to learn guitar?"
    async with app_client(make_settings(verifier="overlap")) as http:
        await http.post("/v1/query", json={"prompt": asked})
        strict = await http.post(
            "/v1/query",
            json={"prompt": paraphrase},
            headers={"X-Sentinel-Max-Wrong-Hit-Rate": "0", "Cache-Control": "no-store"},
        )
        assert strict.json()["match"] == "miss"
        fair = await http.post(
            "/v1/query",
            json={"prompt": paraphrase, "max_wrong_hit_rate": 0.05},
            headers={"Cache-Control": "no-store"},
        )
        assert fair.json()["match"] == "semantic", fair.json()
        default = (await http.post("/v1/query", json={"prompt": paraphrase})).json()
        assert default["match"] == "semantic"
        assert default["verifier_score"] is None  # not gated: the verifier did not read it
        assert 0.87 <= default["guard_score"] < 0.93
    assert fake_llm.call_count == 2  # the question and the strict request's miss
