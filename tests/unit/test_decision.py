"""The cache decision without Redis, a model or a provider: in-memory parts behind its seams.

QueryService's collaborators are replaced by small in-memory stand-ins with the same methods
(store, metrics, negative cache, coalescing, embedder, provider), so each rule of the
decision (plan and scope, the threshold and guard loop, bypass, the negative cache and the
accounting of coalesced requests) is checked directly and fast.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, cast

import msgspec
import numpy as np
import numpy.typing as npt
import pytest

from app.cache.aliases import Alias
from app.cache.breaker import CacheBreaker
from app.cache.errors import CacheBypassed
from app.cache.flight import FlightResult, SharedFailure, SingleFlight
from app.cache.negative import Failure, NegativeCache, RememberedFailure
from app.cache.store import CacheStore, Candidate, Entry
from app.errors import (
    BadRequest,
    CacheUnavailable,
    EmbeddingError,
    PromptTooLarge,
    UpstreamError,
    UpstreamRejected,
    UpstreamUnavailable,
)
from app.observability.recorder import Recorder
from app.providers.embedders.base import Embedder, Vector
from app.providers.upstreams.base import ChatDelta, ChatMessage, ChatRequest, ChatResult
from app.providers.upstreams.router import ProviderRouter
from app.service.guard import Guard
from app.service.plan import Ask
from app.service.query import QueryService

DIM = 4


def unit(*values: float) -> Vector:
    vector = np.asarray(values, dtype=np.float32)
    result: Vector = vector / np.linalg.norm(vector)
    return result


class MemoryStore:
    """CacheStore's request-path methods over a dict; `down` makes every call fail."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[Entry, Vector | None]] = {}
        self.aliases: dict[str, Alias] = {}
        self.down = False
        self.calls = 0

    def _touch(self) -> None:
        self.calls += 1
        if self.down:
            raise CacheUnavailable("Redis failed: ConnectionError")

    async def take_hit(
        self, entry_id: str, accept: Callable[[Entry], bool] | None = None
    ) -> Entry | None:
        self._touch()
        found = self.entries.get(entry_id)
        if found is None or (accept is not None and not accept(found[0])):
            return None
        return found[0]

    async def take_hit_or_alias(
        self, entry_id: str, accept: Callable[[Entry, Alias], bool]
    ) -> tuple[Entry, Alias | None] | None:
        self._touch()
        if entry_id in self.entries:
            return self.entries[entry_id][0], None
        alias = self.aliases.get(entry_id)
        target = None if alias is None else self.entries.get(alias.target)
        if alias is None or target is None or not accept(target[0], alias):
            return None
        return target[0], alias

    async def alias(self, aliases: Mapping[str, Alias]) -> int:
        self._touch()
        written = {k: a for k, a in aliases.items() if a.target in self.entries}
        self.aliases.update(written)
        return len(written)

    async def nearest(
        self, vector: Vector, *, scope: str, k: int, floor: float | None = None
    ) -> list[Candidate]:
        self._touch()
        scored = [
            Candidate(entry.id, float(np.dot(vector, stored)), entry.prompt)
            for entry, stored in self.entries.values()
            if stored is not None and entry.scope == scope
        ]
        nearest = sorted(scored, key=lambda c: -c.similarity)[:k]
        return [c for c in nearest if floor is None or c.similarity >= floor]

    async def put(self, entry: Entry, vector: Vector | None, *, ttl: int) -> None:
        self._touch()
        self.entries[entry.id] = (entry, vector)

    async def recover(self) -> None:
        self._touch()


class MemoryMetrics:
    """Recorder: the outcomes recorded, with their labels and counts; layers timed."""

    def __init__(self) -> None:
        self.outcomes: list[str] = []
        self.records: list[dict[str, Any]] = []
        self.layers: list[str] = []
        self.near_misses: list[Any] = []

    def record(self, outcome: str, **fields: Any) -> None:
        self.outcomes.append(outcome)
        self.records.append(fields)

    def layer(self, layer: str, seconds: float) -> None:
        self.layers.append(layer)

    def judged(self, *, near_miss: Any, **_: Any) -> None:
        if near_miss is not None:
            self.near_misses.append(near_miss)


class MemoryNegative:
    """NegativeCache over a dict."""

    enabled = True

    def __init__(self) -> None:
        self.failures: dict[str, Failure] = {}

    async def remember(self, entry_id: str, error: UpstreamError) -> None:
        self.failures[entry_id] = Failure(status=error.status_code, code=error.code, message="x")

    async def check(self, entry_id: str) -> None:
        if entry_id in self.failures:
            raise RememberedFailure(self.failures[entry_id], seconds_left=30)

    async def forget(self, entry_id: str) -> None:
        self.failures.pop(entry_id, None)


class TableEmbedder:
    """Vectors from a table; an unknown text fails like an unreachable embedder."""

    id = "table"
    dimension = DIM

    def __init__(self, table: dict[str, Vector]) -> None:
        self.table = table
        self.calls: list[str] = []

    async def embed(self, text: str) -> Vector:
        self.calls.append(text)
        if text not in self.table:
            raise EmbeddingError("embedder unreachable")
        return self.table[text]

    async def embed_many(self, texts: Any) -> npt.NDArray[np.float32]:
        return np.stack([await self.embed(text) for text in texts])

    async def aclose(self) -> None:
        return None


class ScriptedProvider:
    """A chat provider that answers `answer to: <last message>` or raises what it is given."""

    name = "fake"
    configured = True
    default_model = "m1"

    def __init__(self) -> None:
        self.requests: list[ChatRequest] = []
        self.error: UpstreamError | None = None

    async def chat(self, request: ChatRequest) -> ChatResult:
        self.requests.append(request)
        if self.error is not None:
            raise self.error
        return ChatResult(
            message=ChatMessage(
                role="assistant", content=f"answer to: {request.messages[-1].content}"
            ),
            finish_reason="stop",
            model=request.model,
            prompt_tokens=10,
            completion_tokens=20,
            provider=self.name,
        )

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatDelta]:
        result = await self.chat(request)
        yield ChatDelta(role="assistant", model=result.model, provider=self.name)
        yield ChatDelta(content=result.message.content)
        yield ChatDelta(finish_reason="stop", usage=(10, 20))


class FixedGuard:
    """A guard that trusts only the prompts it is told to (probability 1.0, else 0.0)."""

    threshold = 0.5

    def __init__(self, *same: str) -> None:
        self.same = set(same)

    def probability(self, question: str, cached: str, similarity: float) -> float:
        return 1.0 if cached in self.same else 0.0


class ScriptedFlight:
    """SingleFlight.run as a script: lead, or hand back what another caller produced."""

    def __init__(self) -> None:
        self.shared: Any = None
        self.failure: BaseException | None = None

    async def run(
        self,
        key: str,
        lead: Callable[[], Awaitable[Any]],
        follow: Callable[[], Awaitable[Any]],
        **_: Any,
    ) -> FlightResult[Any]:
        if self.failure is not None:
            raise SharedFailure(self.failure)
        if self.shared is not None:
            return FlightResult(self.shared, waited=True, shared=True)
        return FlightResult(await lead(), waited=False)


Q = "what is the boiling point of water?"
PARAPHRASE = "at what temperature does water boil?"
NEAR_MISS = "what is the freezing point of water?"


class Parts:
    """A QueryService over in-memory parts, and the parts for the test to look at."""

    def __init__(self, *, guard: Any = None, threshold: float = 0.8) -> None:
        self.store = MemoryStore()
        self.metrics = MemoryMetrics()
        self.negative = MemoryNegative()
        self.flight = ScriptedFlight()
        self.embedder = TableEmbedder(
            {Q: unit(1, 0, 0, 0), PARAPHRASE: unit(1, 0.1, 0, 0), NEAR_MISS: unit(1, 0.2, 0, 0)}
        )
        self.provider = ScriptedProvider()
        self.breaker = CacheBreaker(self.store.recover, failure_threshold=2, probe_interval=60)
        self.service = QueryService(
            store=cast(CacheStore, self.store),
            metrics=cast(Recorder, self.metrics),
            embedder=cast(Embedder, self.embedder),
            providers=ProviderRouter({"fake": self.provider}, "fake"),
            similarity_threshold=threshold,
            guard=cast(Guard | None, guard),
            negative=cast(NegativeCache, self.negative),
            flight=cast(SingleFlight, self.flight),
            breaker=self.breaker,
            ttl=60,
            top_k=3,
            max_prompt_chars=1000,
        )

    async def ask(self, prompt: str, **fields: Any) -> Any:
        return await self.service.answer(Ask.of_prompt(prompt, **fields))


# -- plan and scope ----------------------------------------------------------------------------


def test_the_plan_routes_the_model_and_normalises_the_question() -> None:
    plan = Parts().service.plan(Ask.of_prompt("  What is   HNSW? "))
    assert plan.model_id == "fake/m1"
    assert plan.question == "What is HNSW?"
    assert plan.ttl == 60
    assert plan.threshold == 0.8
    assert plan.read_cache
    assert plan.write_cache


def test_everything_that_changes_an_answer_changes_the_entry_id() -> None:
    planner = Parts().service
    base = planner.plan(Ask.of_prompt(Q)).entry_id
    assert planner.plan(Ask.of_prompt(f"  {Q} ")).entry_id == base  # whitespace only
    changed = [
        Ask.of_prompt(Q, temperature=0.5),
        Ask.of_prompt(Q, max_tokens=10),
        Ask.of_prompt(Q, tenant="team-a"),
        Ask.of_prompt(Q, namespace="docs"),
        Ask.of_prompt(Q, model="fake/m2"),
        Ask(
            messages=[
                ChatMessage(role="system", content="Be brief."),
                ChatMessage(role="user", content=Q),
            ]
        ),
    ]
    ids = {planner.plan(ask).entry_id for ask in changed}
    assert base not in ids
    assert len(ids) == len(changed)
    # The cache controls do not change what the answer is.
    assert planner.plan(Ask.of_prompt(Q, ttl=5, similarity_threshold=0.99)).entry_id == base


def test_a_conversation_ending_in_a_tool_result_matches_exactly_only() -> None:
    ask = Ask(
        messages=[
            ChatMessage(role="user", content=Q),
            ChatMessage(role="tool", content="100 C", tool_call_id="call_1"),
        ]
    )
    assert Parts().service.plan(ask).question is None


def test_bad_requests_are_4xx_before_any_io() -> None:
    service = Parts().service
    with pytest.raises(BadRequest):
        service.plan(Ask(messages=[]))
    with pytest.raises(PromptTooLarge):
        service.plan(Ask.of_prompt("x" * 1001))


# -- exact, semantic, threshold and guard --------------------------------------------------------


async def test_a_miss_is_stored_then_served_exactly_and_to_a_paraphrase() -> None:
    parts = Parts()
    first = await parts.ask(Q)
    assert (first.match, first.response) == ("miss", f"answer to: {Q}")
    assert (await parts.ask(Q)).match == "exact"
    paraphrase = await parts.ask(PARAPHRASE)
    assert paraphrase.match == "semantic"
    assert paraphrase.matched_prompt == Q
    assert len(parts.provider.requests) == 1
    assert parts.metrics.outcomes == ["miss", "exact", "semantic"]
    miss, exact, _ = parts.metrics.records
    assert (miss["tenant"], miss["model"]) == ("", "fake/m1")
    assert miss["upstream_called"]
    assert miss["tokens_spent"] > 0
    assert not miss["bypass"]
    assert exact["tokens_saved"] == miss["tokens_spent"]
    assert parts.metrics.layers.count("exact_lookup") == 3
    assert {"embed", "knn", "judge", "store"} <= set(parts.metrics.layers)


async def test_a_repeated_paraphrase_is_served_through_its_alias_without_an_embedding() -> None:
    parts = Parts(guard=FixedGuard(Q))
    await parts.ask(Q)
    first = await parts.ask(PARAPHRASE)
    await parts.service.semantic.drain()  # the alias is written after the answer
    embeds = list(parts.embedder.calls)
    again = await parts.ask(PARAPHRASE)
    assert parts.embedder.calls == embeds  # no embedding for the repeat
    assert (again.match, again.entry_id, again.matched_prompt) == (
        "semantic",
        first.entry_id,
        Q,
    )
    assert again.similarity == first.similarity
    assert again.guard_score == first.guard_score
    assert parts.metrics.outcomes == ["miss", "semantic", "semantic"]
    assert parts.metrics.layers.count("alias") == 1


async def test_an_alias_does_not_serve_what_its_entry_or_the_request_refuses() -> None:
    parts = Parts()
    await parts.ask(Q)
    first = await parts.ask(PARAPHRASE)
    await parts.service.semantic.drain()
    # A stricter threshold than the alias's similarity: not through the alias (nor the KNN).
    strict = await parts.ask(PARAPHRASE, similarity_threshold=0.9999)
    assert strict.match == "miss"
    # The entry disputed for that question (feedback): the alias stops serving it.
    parts.store.entries.pop(strict.entry_id)
    entry, vector = parts.store.entries[first.entry_id]
    digest = parts.service.plan(Ask.of_prompt(PARAPHRASE)).question_digest
    parts.store.entries[first.entry_id] = (msgspec.structs.replace(entry, vetoed=digest), vector)
    calls = len(parts.embedder.calls)
    assert (await parts.ask(PARAPHRASE)).match == "miss"
    assert len(parts.embedder.calls) == calls + 1  # refused by the alias, then by the KNN path
    # The entry gone: nothing served through its alias.
    parts.store.entries.clear()
    assert (await parts.ask(PARAPHRASE)).match == "miss"


async def test_the_threshold_stops_the_candidate_loop() -> None:
    parts = Parts(threshold=0.999)
    await parts.ask(Q)
    assert (await parts.ask(PARAPHRASE)).match == "miss"  # cosine 0.995 < 0.999
    assert (await parts.ask(NEAR_MISS, similarity_threshold=0.9)).match == "semantic"


async def test_the_guard_skips_a_near_miss_and_serves_a_lower_neighbour() -> None:
    parts = Parts(guard=FixedGuard(PARAPHRASE))
    await parts.ask(PARAPHRASE)  # stored first: cosine to NEAR_MISS 0.995
    await parts.ask(Q, read_cache=False)  # stored second: cosine to NEAR_MISS 0.981
    answer = await parts.ask(NEAR_MISS)
    # Q is the nearest neighbour but the guard refuses it; PARAPHRASE is further, accepted.
    assert answer.match == "semantic"
    assert answer.matched_prompt == PARAPHRASE
    assert answer.guard_score == 1.0
    refused = Parts(guard=FixedGuard())
    await refused.ask(Q)
    assert (await refused.ask(PARAPHRASE)).match == "miss"
    # The refusal is kept as a near miss, beside the prompt it was refused for.
    (near,) = refused.metrics.near_misses
    assert (near.prompt, near.nearest_prompt, near.stage) == (PARAPHRASE, Q, "guard")


# -- bypass: Redis and the embedder ---------------------------------------------------------------


async def test_redis_failing_bypasses_the_cache_and_opens_the_breaker() -> None:
    parts = Parts()
    parts.store.down = True
    for prompt in (Q, PARAPHRASE):
        answer = await parts.ask(prompt)
        assert answer.match == "miss"
        assert answer.bypass
    assert parts.breaker.is_open
    calls = parts.store.calls
    assert (await parts.ask(NEAR_MISS)).bypass
    assert parts.store.calls == calls  # open: Redis is not even tried
    assert parts.service.bypassed == 3
    assert all(record["bypass"] for record in parts.metrics.records)
    await parts.breaker.aclose()


async def test_an_embedder_failure_skips_the_semantic_layer_only() -> None:
    parts = Parts()
    unknown = "a question the embedder cannot embed"
    answer = await parts.ask(unknown)
    assert (answer.match, answer.bypass) == ("miss", False)
    assert parts.service.semantic_skipped == 1
    assert parts.embedder.calls == [unknown]  # not tried again to store the answer
    _entry, vector = parts.store.entries[answer.entry_id]
    assert vector is None  # kept for exact hits
    assert (await parts.ask(unknown)).match == "exact"


# -- the negative cache --------------------------------------------------------------------------


async def test_a_transient_failure_is_remembered_and_a_success_forgets_it() -> None:
    parts = Parts()
    parts.provider.error = UpstreamUnavailable("cannot reach the provider")
    with pytest.raises(UpstreamUnavailable):
        await parts.ask(Q)
    with pytest.raises(RememberedFailure):
        await parts.ask(Q)
    assert len(parts.provider.requests) == 1  # the second never reached the provider
    parts.provider.error = None
    assert (await parts.ask(Q, read_cache=False)).match == "miss"
    assert parts.negative.failures == {}
    assert (await parts.ask(Q)).match == "exact"
    assert parts.metrics.outcomes == ["error", "error", "miss", "exact"]
    assert [r.get("negative_hit", False) for r in parts.metrics.records[:2]] == [False, True]


async def test_a_rejected_request_is_not_remembered() -> None:
    parts = Parts()
    parts.provider.error = UpstreamRejected("bad parameter")
    for _ in range(2):
        with pytest.raises(UpstreamRejected):
            await parts.ask(Q)
    assert len(parts.provider.requests) == 2
    assert parts.negative.failures == {}


# -- coalescing accounting -----------------------------------------------------------------------


async def test_a_shared_answer_is_an_exact_hit_with_its_own_count_and_latency() -> None:
    parts = Parts()
    leader = await parts.ask(Q)
    # A leader's answer that was itself a hit (it waited for another instance).
    parts.flight.shared = msgspec.structs.replace(
        leader, match="exact", cache_hit=True, waited=True, latency_ms=9999.0, cost_usd=0.0
    )
    follower = await parts.ask("A different question, same key in the script")
    assert follower.match == "exact"
    assert follower.waited
    assert follower.latency_ms < 9999.0
    assert follower.saved_usd == leader.cost_usd
    assert follower.cost_usd == 0.0
    assert parts.metrics.outcomes == ["miss", "exact"]


async def test_a_shared_failure_reaches_the_follower_and_is_counted() -> None:
    parts = Parts()
    parts.flight.failure = UpstreamRejected("bad parameter")
    with pytest.raises(UpstreamRejected):
        await parts.ask(Q)
    assert parts.provider.requests == []
    assert parts.metrics.outcomes == ["error"]


async def test_cache_aside_store_fails_fast_while_the_breaker_is_open() -> None:
    parts = Parts()
    parts.breaker.trip("test")
    result = ChatResult(
        message=ChatMessage(role="assistant", content="a"),
        finish_reason="stop",
        model="m1",
        prompt_tokens=1,
        completion_tokens=1,
        provider="fake",
    )
    with pytest.raises(CacheBypassed):
        await parts.service.put(Ask.of_prompt(Q), result)
    assert parts.embedder.calls == []  # refused before embedding
    await parts.breaker.aclose()
