"""Answer a request: exact hit, else semantic hit, else the provider (and store its answer).

Both endpoints come here: /v1/query as a one-message chat, /v1/chat/completions as it is.
The decision reads as its four steps; what it stands on lives beside it: `plan` (pure:
scope, question, entry id), `request_cache` (Redis under budgets and the breaker),
`answers` (what is answered) and `streaming` (assembling and replaying streams).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Unpack

import msgspec

from app.cache.audits import AuditStore
from app.cache.breaker import CacheBreaker
from app.cache.errors import CacheBypassed
from app.cache.flight import FlightTimeout, SharedFailure, SingleFlight
from app.cache.metrics import Counts, Outcome
from app.cache.negative import NegativeCache, RememberedFailure
from app.cache.store import CacheStore, Entry
from app.errors import SentinelError, UpstreamError, UpstreamNotConfigured
from app.observability.recorder import Recorder
from app.providers.embedders.base import Embedder
from app.providers.embedders.breaker import EmbedderBreaker
from app.providers.upstreams.base import ChatDelta, ChatResult
from app.providers.upstreams.router import ProviderRouter, is_transient
from app.service.answers import (
    Answer,
    Match,
    StreamedAnswer,
    answer_from,
    elapsed_ms,
    shared_hit,
    streamed_miss,
)
from app.service.audit import HitAudit
from app.service.embedding import Embedding
from app.service.exact import Found, Prefetched, held_entry, prefetch
from app.service.guard import Guard
from app.service.judge import Judge, Verdict
from app.service.plan import Ask, Plan, Planner, entry_for
from app.service.pricing import cost_usd
from app.service.request_cache import RequestCache
from app.service.semantic import SemanticLayer, SemanticMatch, from_alias
from app.service.streaming import Assembler, replay
from app.service.verifier import Calibration, Verifier
from app.settings import DEFAULT_LOOKUP_TIMEOUT_MS, DEFAULT_WRITE_TIMEOUT_MS

log = logging.getLogger("sentinel.service")


class QueryService:
    """The cache decision, in order: exact → semantic (guarded) → provider → store.

    Every Redis operation goes through the circuit breaker with a time budget (reads:
    `lookup_timeout`, writes: `write_timeout`, seconds); a failed or late one bypasses the
    cache for the rest of the request, which the provider answers (`Answer.bypass`). Each
    embedding goes through the embedder's breaker (`embed_breaker`, with its own budget); a
    failed or late one skips the semantic layer: exact hits still serve, and a miss's answer
    is stored for exact hits. Without `embed_breaker` (offline replays) embeddings are awaited
    as long as they take.
    """

    def __init__(
        self,
        *,
        store: CacheStore,
        metrics: Recorder,
        embedder: Embedder,
        providers: ProviderRouter,
        similarity_threshold: float,
        guard: Guard | None = None,
        verifier: Verifier | None = None,
        calibration: Calibration | None = None,
        max_wrong_hit_rate: float | None = None,
        near_miss_checks: bool = False,
        gated: bool = False,  # VERIFIER=overlap: verify only high-overlap hits (Judge)
        negative: NegativeCache | None = None,
        flight: SingleFlight | None = None,
        wait_timeout: float = 30.0,
        breaker: CacheBreaker | None = None,
        embed_breaker: EmbedderBreaker | None = None,
        audits: AuditStore | None = None,
        verify_sample_rate: float = 0.0,
        answer_agreement: float = 0.8,
        paraphrase_alias: bool = True,
        lookup_timeout: float = DEFAULT_LOOKUP_TIMEOUT_MS / 1000,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT_MS / 1000,
        ttl: int,
        top_k: int,
        max_prompt_chars: int,
    ) -> None:
        self.cache = RequestCache(
            store=store,
            metrics=metrics,
            negative=negative,
            breaker=breaker or CacheBreaker(store.recover),
            lookup_timeout=lookup_timeout,
            write_timeout=write_timeout,
        )
        self.planner = Planner(
            providers=providers,
            similarity_threshold=similarity_threshold,
            ttl=ttl,
            max_prompt_chars=max_prompt_chars,
            calibration=calibration,
            max_wrong_hit_rate=max_wrong_hit_rate,
            gated=gated and verifier is not None,
        )
        self.judge = Judge(guard, verifier, calibration, checks=near_miss_checks, gated=gated)
        self.embedder = embedder
        self.providers = providers
        self.guard = guard
        self.flight = flight
        self.wait_timeout = wait_timeout
        self.embed_breaker = embed_breaker
        self._embed = Embedding(embedder, embed_breaker, metrics)
        self.semantic = SemanticLayer(
            self.cache, self._embed, self.judge, top_k=top_k, alias=paraphrase_alias
        )
        # Live verification of semantic hits and users' feedback; None: neither (replays).
        self.audit = (
            None
            if audits is None
            else HitAudit(
                providers=providers,
                embedder=embedder,
                cache=self.cache,
                audits=audits,
                sample_rate=verify_sample_rate,
                agreement=answer_agreement,
            )
        )
        # Answers given without the cache since start (this process), for /health.
        self.bypassed = 0

    @property
    def semantic_skipped(self) -> int:
        """Requests that skipped the semantic layer because embedding failed (this process)."""
        return self._embed.skipped

    @property
    def breaker(self) -> CacheBreaker:
        """The circuit breaker in front of Redis."""
        return self.cache.breaker

    @property
    def similarity_threshold(self) -> float:
        """The cosine floor a semantic candidate needs when a request sets none."""
        return self.planner.similarity_threshold

    def plan(self, ask: Ask) -> Plan:
        """Route the model and compute scope, question and entry id; 4xx errors for bad input."""
        return self.planner.plan(ask)

    async def answer(self, ask: Ask, prefetched: Prefetched | None = None) -> Answer:
        """Answer from the cache when it can, from the provider when it must."""
        started = time.perf_counter() if prefetched is None else prefetched.started
        plan = self.plan(ask)
        found = await self._looked_up(plan, started, prefetched)
        if found.hit is not None:
            return found.hit

        async def lead() -> Answer:
            try:
                result = await self.providers.chat(plan.model_id, plan.request)
            except UpstreamError as exc:
                await self._failed(plan, exc, started)
                raise
            return await self._store(plan, result, found, started)

        if self.flight is None or self.breaker.is_open or not plan.read_cache:
            return await lead()
        if found.bypass or not plan.write_cache:  # Redis failing: coalescing would only wait
            return await lead()

        async def follow() -> Answer | None:
            # The leader's stored answer, or its remembered failure (raised).
            entry = await self.cache.entry(plan.entry_id)
            if entry is not None:
                answer = await self._hit(plan, entry, "exact", 1.0, started)
                return msgspec.structs.replace(answer, waited=True)
            await self._check_failure(plan, started)
            return None

        # Concurrent identical misses, here or in other instances: one provider call.
        deadline = asyncio.get_running_loop().time() + self.wait_timeout
        try:
            flown = await self.flight.run(
                plan.entry_id, lead, follow, deadline=deadline, share_errors=(SentinelError,)
            )
        except FlightTimeout:
            self._record(plan, "error", started)
            raise
        except SharedFailure as shared:
            # The identical request led in this process failed (a 400 included): the same
            # answer for this caller, without another provider call.
            self._record(plan, "error", started)
            raise shared.error from None
        if flown.shared:
            # The answer of the identical request led in this process (from the provider, or
            # itself a hit): for this caller an exact hit, with its own latency and count.
            return await self._shared(flown.value, plan, started)
        return flown.value

    async def cached_hit(self, plan: Plan, started: float) -> Answer | Prefetched:
        """`answer`'s lookup for the fast path: its hit, else what it found for `answer`."""
        pre = await prefetch(self.cache, plan, self.semantic.accepts(plan), started)
        try:
            found = await self._lookup(plan, started, pre)
        except RememberedFailure as exc:
            return pre._replace(failure=exc)
        return found.hit or pre._replace(found=found)

    async def _looked_up(self, plan: Plan, started: float, pre: Prefetched | None) -> Found:
        """`_lookup`, or what the fast path's lookup of this plan found (or raised)."""
        if pre is None or pre.entry_id != plan.entry_id:
            return await self._lookup(plan, started)
        if pre.failure is not None:
            raise pre.failure
        return pre.found or await self._lookup(plan, started, pre)

    async def lookup(self, ask: Ask) -> Answer | None:
        """Cache-aside read: the cached answer for this request, or None; never the provider."""
        started = time.perf_counter()
        plan = self.plan(msgspec.structs.replace(ask, read_cache=True))
        found = await self._find(plan, started)
        if found.hit is None and not found.bypass:
            self._record(plan, "miss", started)
        return found.hit

    async def put(self, ask: Ask, result: ChatResult) -> Answer:
        """Cache-aside write: store an answer the caller got from its own LLM call."""
        started = time.perf_counter()
        plan = self.plan(msgspec.structs.replace(ask, write_cache=True))
        if self.breaker.is_open:  # fail fast, before embedding: the caller learns it at once
            raise CacheBypassed(f"not stored: the cache is bypassed ({self.breaker.reason})")
        # Without a vector (the embedder failed) the answer is still kept, for exact hits.
        vector = None if plan.question is None else await self._embed(plan.question)
        entry = entry_for(plan, result)
        store = self.cache.store
        await self.cache.write("store", lambda: store.put(entry, vector, ttl=plan.ttl))
        return answer_from(entry, "miss", None, elapsed_ms(started), cost=0.0, saved=0.0)

    async def stream(self, ask: Ask) -> StreamedAnswer:
        """Like `answer`, streamed: a hit is replayed in pieces; a miss is relayed as it arrives.

        A miss returns once the provider's first piece is in (so errors before it are still
        plain HTTP errors) and is stored only after the provider ended the stream properly.
        """
        started = time.perf_counter()
        plan = self.plan(ask)
        found = await self._lookup(plan, started)
        if found.hit is not None:
            return StreamedAnswer(head=found.hit, deltas=replay(found.hit))
        deltas = self.providers.stream(plan.model_id, plan.request)
        try:
            first = await anext(deltas)
        except UpstreamError as exc:
            await self._failed(plan, exc, started)
            raise
        # Known now only if the lookup failed or the breaker is open; a store failing at the
        # end of the stream comes after the headers.
        bypass = found.bypass or (plan.write_cache and self.breaker.is_open)
        head = streamed_miss(
            plan.entry_id,
            model=first.model or plan.request.model,
            provider=first.provider or "",
            latency_ms=elapsed_ms(started),
            bypass=bypass,
        )
        relay = self._relay(plan, first, deltas, found, started)
        return StreamedAnswer(head=head, deltas=relay)

    async def _relay(
        self,
        plan: Plan,
        first: ChatDelta,
        deltas: AsyncIterator[ChatDelta],
        found: Found,
        started: float,
    ) -> AsyncIterator[ChatDelta]:
        """Pass the provider's pieces on, assembling the answer; store it once complete."""
        assembled = Assembler(first)
        try:
            yield first
            async for delta in deltas:
                assembled.add(delta)
                yield delta
        except UpstreamError as exc:
            # Not remembered: a stream broken midway was never retried, so the next try may
            # well succeed.
            await self._failed(plan, exc, started, remember=False)
            raise
        finally:
            # A client that went away closes this generator: close the provider's stream too.
            closer = getattr(deltas, "aclose", None)
            if closer is not None:
                await closer()
        result = assembled.result(plan.request.model)
        if result is None:
            log.warning("stream ended without an answer; nothing stored")
            return
        await self._store(plan, result, found, started)

    async def _lookup(self, plan: Plan, started: float, prior: Prefetched | None = None) -> Found:
        """An exact hit, else a guarded semantic hit, else a remembered failure (raised).

        Without a hit, the query's vector comes back too, for storing the answer later.
        """
        if not plan.read_cache:
            return Found()
        found = await self._find(plan, started, prior)
        if found.hit is None and not found.bypass:
            await self._check_failure(plan, started)
        elif found.hit is not None and self.audit is not None:
            self.audit.maybe_check(plan, found.hit, found.vector)
        return found

    async def _find(self, plan: Plan, started: float, prior: Prefetched | None = None) -> Found:
        try:
            found = await held_entry(self.cache, plan, self.semantic.accepts(plan), prior)
        except CacheBypassed as exc:
            self.cache.skipped(exc)
            return Found(bypass=True)
        if found is not None:
            entry, alias = found
            if alias is None:
                return Found(hit=await self._hit(plan, entry, "exact", 1.0, started))
            # A repeated paraphrase: served as its first semantic hit was, without an embedding.
            return Found(hit=await self._semantic_hit(plan, from_alias(entry, alias), started))
        if plan.question is None:
            return Found()
        search = await self.semantic.search(plan, plan.question)
        if search.match is None:
            return Found(None, search.vector, search.bypass, search.embed_failed)
        self.semantic.remember(plan, search.match)
        hit = await self._semantic_hit(plan, search.match, started)
        return Found(hit=hit, vector=search.vector)

    async def _semantic_hit(self, plan: Plan, match: SemanticMatch, started: float) -> Answer:
        return await self._hit(
            plan, match.entry, "semantic", match.similarity, started, verdict=match.verdict
        )

    async def _store(self, plan: Plan, result: ChatResult, found: Found, started: float) -> Answer:
        """Keep a successful answer (if the cache can) and report the miss.

        After a bypassed lookup the store is still tried while the breaker is closed: a
        single slow read should not cost the entry. It never fails the request.
        """
        entry = entry_for(plan, result)
        bypass, vector = found.bypass, found.vector
        if self.breaker.is_open:
            bypass = bypass or plan.write_cache
        elif plan.write_cache or self.cache.remembers_failures:
            wants_vector = plan.question is not None and plan.write_cache
            if vector is None and wants_vector and not found.embed_failed:
                # Paid for already: without a vector it is kept for exact hits.
                vector = await self._embed(plan.question or "")
            try:
                await self.cache.keep(entry, vector, ttl=plan.ttl, store=plan.write_cache)
            except CacheBypassed as exc:
                # The caller paid for this answer: give it to them even if it cannot be kept.
                self.cache.skipped(exc, "answer not stored")
                bypass = bypass or plan.write_cache
        if bypass:
            self.bypassed += 1
        spent = cost_usd(entry.model, entry.prompt_tokens, entry.completion_tokens)
        latency_ms = elapsed_ms(started)
        tokens = entry.prompt_tokens + entry.completion_tokens
        self._record(
            plan, "miss", started, upstream_called=True, usd_spent=spent, tokens_spent=tokens,
            bypass=bypass,
        )  # fmt: skip
        return answer_from(entry, "miss", None, latency_ms, cost=spent, saved=0.0, bypass=bypass)

    async def _check_failure(self, plan: Plan, started: float) -> None:
        """Raise a failure remembered for this exact request, without calling the provider."""
        try:
            await self.cache.check_failure(plan.entry_id)
        except RememberedFailure:
            self._record(plan, "error", started, negative_hit=True)
            raise

    async def _failed(
        self, plan: Plan, exc: UpstreamError, started: float, *, remember: bool = True
    ) -> None:
        """Count a provider failure; remember a transient one (429, 5xx, timeout)."""
        if isinstance(exc, UpstreamNotConfigured):
            self._record(plan, "error", started)
            return
        self._record(plan, "error", started, upstream_called=True, upstream_failed=True)
        if remember and is_transient(exc):
            await self.cache.remember_failure(plan.entry_id, exc)

    async def _shared(self, leader: Answer, plan: Plan, started: float) -> Answer:
        """The local leader's answer as a hit that waited for it (counted as an exact hit)."""
        usage = leader.usage
        saved = cost_usd(leader.model, usage.prompt_tokens, usage.completion_tokens)
        tokens = usage.prompt_tokens + usage.completion_tokens
        self._record(plan, "exact", started, tokens_saved=tokens, usd_saved=saved)
        return shared_hit(leader, plan.question, latency_ms=elapsed_ms(started), saved=saved)

    async def _hit(
        self,
        plan: Plan,
        entry: Entry,
        match: Match,
        similarity: float,
        started: float,
        *,
        verdict: Verdict | None = None,
    ) -> Answer:
        saved = cost_usd(entry.model, entry.prompt_tokens, entry.completion_tokens)
        latency_ms = elapsed_ms(started)
        self._record(
            plan,
            "exact" if match == "exact" else "semantic",
            started,
            tokens_saved=entry.prompt_tokens + entry.completion_tokens,
            usd_saved=saved,
        )
        return answer_from(
            entry,
            match,
            similarity,
            latency_ms,
            cost=0.0,
            saved=saved,
            guard_score=None if verdict is None else verdict.guard_score,
            verifier_score=None if verdict is None else verdict.verifier_score,
        )

    def _record(
        self, plan: Plan, outcome: Outcome, started: float, **counts: Unpack[Counts]
    ) -> None:
        self.cache.metrics.record(
            outcome,
            tenant=plan.tenant,
            model=plan.model_id,
            latency_ms=elapsed_ms(started),
            **counts,
        )
