"""Answer a prompt: exact hit, else semantic hit, else the upstream (and store its answer)."""

from __future__ import annotations

import logging
import time
from typing import Literal

import msgspec

from app.cache import keys
from app.cache.metrics import MetricsStore, Outcome
from app.cache.store import CacheStore, Entry, new_entry
from app.errors import CacheUnavailable, PromptTooLarge, UpstreamError, UpstreamNotConfigured
from app.providers.embedders.base import Embedder
from app.providers.upstreams.base import Upstream
from app.service.guard import Guard
from app.service.pricing import cost_usd
from app.service.prompt import Scope, normalize_prompt

log = logging.getLogger("sentinel.service")

Match = Literal["exact", "semantic", "miss"]


class Query(msgspec.Struct, frozen=True, kw_only=True):
    """One prompt and the caller's options (None means the configured default)."""

    prompt: str
    similarity_threshold: float | None = None
    ttl: int | None = None
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    """Tokens of the upstream call that produced the answer."""

    prompt_tokens: int
    completion_tokens: int


class Answer(msgspec.Struct, frozen=True, kw_only=True):
    """What /v1/query returns."""

    response: str
    cache_hit: bool
    match: Match
    similarity: float | None
    # The guard's P(same question) for a semantic hit; None for exact hits and misses.
    guard_score: float | None = None
    matched_prompt: str | None
    entry_id: str
    model: str
    latency_ms: float
    usage: Usage
    cost_usd: float
    saved_usd: float


class QueryService:
    """The cache decision, in order: exact → semantic → upstream → store."""

    def __init__(
        self,
        *,
        store: CacheStore,
        metrics: MetricsStore,
        embedder: Embedder,
        upstream: Upstream,
        similarity_threshold: float,
        guard: Guard | None = None,
        ttl: int,
        top_k: int,
        max_prompt_chars: int,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.embedder = embedder
        self.upstream = upstream
        self.similarity_threshold = similarity_threshold
        self.guard = guard
        self.ttl = ttl
        self.top_k = top_k
        self.max_prompt_chars = max_prompt_chars

    async def answer(self, query: Query) -> Answer:
        """Answer from the cache when it can, from the upstream when it must."""
        started = time.perf_counter()
        if len(query.prompt) > self.max_prompt_chars:
            raise PromptTooLarge(
                f"prompt has {len(query.prompt)} characters; the limit is "
                f"{self.max_prompt_chars} (MAX_PROMPT_CHARS)"
            )
        prompt = normalize_prompt(query.prompt)
        model = query.model or self.upstream.default_model
        scope = Scope(model=model, max_tokens=query.max_tokens, temperature=query.temperature).tag()
        entry_id = keys.entry_id(scope, prompt)

        entry = await self.store.take_hit(entry_id)
        if entry is not None:
            return await self._hit(entry, "exact", 1.0, started)

        vector = await self.embedder.embed(prompt)
        threshold = (
            self.similarity_threshold
            if query.similarity_threshold is None
            else query.similarity_threshold
        )
        for candidate in await self.store.nearest(vector, scope=scope, k=self.top_k):
            if candidate.similarity < threshold:
                break
            score = None
            if self.guard is not None:
                score = self.guard.probability(prompt, candidate.prompt, candidate.similarity)
                if score < self.guard.threshold:
                    continue  # a near miss; a lower neighbour may still be the same question
            entry = await self.store.take_hit(candidate.entry_id)
            if entry is not None:  # None: it expired between the KNN and the read
                return await self._hit(
                    entry, "semantic", candidate.similarity, started, guard_score=score
                )

        try:
            completion = await self.upstream.complete(
                prompt, model=model, max_tokens=query.max_tokens, temperature=query.temperature
            )
        except UpstreamNotConfigured:
            await self._record("error", started)
            raise
        except UpstreamError:
            await self._record("error", started, upstream_called=True, upstream_failed=True)
            raise
        entry = new_entry(
            entry_id=entry_id,
            prompt=prompt,
            response=completion.text,
            model=completion.model,
            scope=scope,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
        )
        try:
            await self.store.put(entry, vector, ttl=query.ttl or self.ttl)
        except CacheUnavailable as exc:
            # The caller paid for this answer: give it to them even if it cannot be kept.
            log.warning("answer not stored: %s", exc.message)
        spent = cost_usd(entry.model, entry.prompt_tokens, entry.completion_tokens)
        latency_ms = _elapsed_ms(started)
        await self._record("miss", started, upstream_called=True, usd_spent=spent)
        return _answer(entry, "miss", None, latency_ms, cost=spent, saved=0.0)

    async def _hit(
        self,
        entry: Entry,
        match: Match,
        similarity: float,
        started: float,
        *,
        guard_score: float | None = None,
    ) -> Answer:
        saved = cost_usd(entry.model, entry.prompt_tokens, entry.completion_tokens)
        latency_ms = _elapsed_ms(started)
        await self._record(
            "exact" if match == "exact" else "semantic",
            started,
            tokens_saved=entry.prompt_tokens + entry.completion_tokens,
            usd_saved=saved,
        )
        return _answer(
            entry, match, similarity, latency_ms, cost=0.0, saved=saved, guard_score=guard_score
        )

    async def _record(
        self,
        outcome: Outcome,
        started: float,
        *,
        upstream_called: bool = False,
        upstream_failed: bool = False,
        tokens_saved: int = 0,
        usd_saved: float = 0.0,
        usd_spent: float = 0.0,
    ) -> None:
        # Metrics are bookkeeping: losing one count must not fail the request it counts.
        try:
            await self.metrics.record(
                outcome,
                latency_ms=_elapsed_ms(started),
                upstream_called=upstream_called,
                upstream_failed=upstream_failed,
                tokens_saved=tokens_saved,
                usd_saved=usd_saved,
                usd_spent=usd_spent,
            )
        except CacheUnavailable as exc:
            log.warning("metrics not recorded: %s", exc.message)


def _answer(
    entry: Entry,
    match: Match,
    similarity: float | None,
    latency_ms: float,
    *,
    cost: float,
    saved: float,
    guard_score: float | None = None,
) -> Answer:
    return Answer(
        response=entry.response,
        cache_hit=match != "miss",
        match=match,
        similarity=None if similarity is None else round(similarity, 6),
        guard_score=None if guard_score is None else round(guard_score, 4),
        matched_prompt=None if match == "miss" else entry.prompt,
        entry_id=entry.id,
        model=entry.model,
        latency_ms=round(latency_ms, 3),
        usage=Usage(prompt_tokens=entry.prompt_tokens, completion_tokens=entry.completion_tokens),
        cost_usd=round(cost, 10),
        saved_usd=round(saved, 10),
    )


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000
