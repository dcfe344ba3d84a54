"""A live, measured wrong-hit rate: some semantic hits are asked again, after the fact.

A sample of semantic hits (VERIFY_SAMPLE_RATE) is sent to the provider in the background,
after the client has its cached answer; the fresh answer is compared with the cached one.
Agreements and disagreements, counted per tenant and model, estimate the wrong-hit rate with
a 95% interval (/v1/metrics). A disagreement also teaches the entry (it never answers that
question again, and its own similarity floor rises above the one it was served at) and keeps
the fresh answer under the question's own entry, since it was paid for. Feedback from users
(POST /v1/feedback) does the same for one answer, and is counted apart (it is not a sample).

Two answers agree when their normalized texts are equal, or when their embeddings' cosine
reaches ANSWER_AGREEMENT: LLM answers to one question vary in wording, answers to different
questions differ in content. It is a heuristic, so the estimate is one too: an upper bound
when the provider answers with varied wording, which is the safe side.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

import msgspec
import numpy as np

from app.cache.audits import AuditStore
from app.cache.errors import CacheBypassed
from app.cache.keys import question_digest
from app.errors import EmbeddingError, EntryNotFound, UpstreamError
from app.providers.embedders.base import Embedder, Vector
from app.providers.upstreams.router import ProviderRouter
from app.service.answers import Answer
from app.service.interval import wilson
from app.service.plan import Plan, entry_for
from app.service.pricing import cost_usd
from app.service.prompt import normalize_prompt, normalize_text
from app.service.request_cache import RequestCache

log = logging.getLogger("sentinel.audit")


class WrongHitEstimate(msgspec.Struct, kw_only=True):
    """One tenant and model: what verification found, and what users said."""

    tenant: str
    model_id: str
    # Semantic hits asked again, and how many of those answers disagreed with the cached one.
    checked: int
    disagreed: int
    # disagreed / checked, and its 95% Wilson interval (None before any check).
    rate: float | None
    low: float | None
    high: float | None
    # What the re-asking cost (provider prices), apart from the savings.
    verification_usd: float
    feedback_correct: int
    feedback_wrong: int


class FeedbackResult(msgspec.Struct, kw_only=True):
    """Body of POST /v1/feedback: what Sentinel did with the verdict."""

    entry_id: str
    # "recorded": a good answer counted; "disputed": the entry no longer answers that
    # question (nor anything as far from it); "deleted": the entry's own answer was wrong.
    action: str


class HitAudit:
    """Samples semantic hits, re-asks them in the background and learns from disagreements."""

    def __init__(
        self,
        *,
        providers: ProviderRouter,
        embedder: Embedder,
        cache: RequestCache,
        audits: AuditStore,
        sample_rate: float,
        agreement: float,
        rng: random.Random | None = None,
        compare: Callable[[str, str], Awaitable[bool]] | None = None,
    ) -> None:
        self.providers = providers
        self.embedder = embedder
        self.cache = cache
        self.audits = audits
        self.sample_rate = sample_rate
        self.agreement = agreement
        self._rng = rng or random.Random()
        # How two answers are compared (default: `agree`); an offline replay knows the truth.
        self._compare = compare or self.agree
        self._running: set[asyncio.Task[None]] = set()

    def maybe_check(self, plan: Plan, hit: Answer, vector: Vector | None) -> None:
        """Re-ask a semantic hit in the background, for a sample of them (never waited for)."""
        if (
            hit.match != "semantic"
            or hit.tool_calls
            or hit.similarity is None
            or self._rng.random() >= self.sample_rate
        ):
            return
        task = asyncio.get_running_loop().create_task(
            self._check(plan, hit, hit.similarity, vector), name="sentinel-hit-audit"
        )
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def drain(self) -> None:
        """Wait for the checks under way (offline replays score them; shutdown lets them go)."""
        while self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def aclose(self) -> None:
        """Cancel the checks under way."""
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)

    async def agree(self, cached: str, fresh: str) -> bool:
        """Whether two answers say the same thing (see the module's docstring)."""
        if normalize_text(cached) == normalize_text(fresh):
            return True
        vectors = await self.embedder.embed_many([cached, fresh])
        return float(np.dot(vectors[0], vectors[1])) >= self.agreement

    async def _check(
        self, plan: Plan, hit: Answer, similarity: float, vector: Vector | None
    ) -> None:
        try:
            result = await self.providers.chat(plan.model_id, plan.request)
            fresh = result.message.content or ""
            agreed = await self._compare(hit.response, fresh)
        except (UpstreamError, EmbeddingError) as exc:
            log.info("hit not verified: %s", exc.message)  # not a sample: nothing is counted
            return
        spent = cost_usd(result.model, result.prompt_tokens, result.completion_tokens)
        try:
            await self.cache.write(
                "verification count",
                lambda: self.audits.record_check(
                    plan.tenant, plan.model_id, agreed=agreed, usd_spent=spent
                ),
            )
            if not agreed:
                log.warning(
                    "verification: a semantic hit disagreed with the provider's answer "
                    "(entry %s, similarity %.4f); that question no longer hits it",
                    hit.entry_id,
                    similarity,
                )
                await self._dispute(hit.entry_id, plan.question_digest, similarity)
                # Paid for: the question gets its own entry with the fresh answer.
                await self.cache.keep(
                    entry_for(plan, result), vector, ttl=plan.ttl, store=plan.write_cache
                )
        except CacheBypassed as exc:
            self.cache.skipped(exc, "verification not recorded")

    async def _dispute(self, entry_id: str, question_digest: str, similarity: float) -> None:
        store = self.cache.store
        await self.cache.write(
            "dispute", lambda: store.dispute(entry_id, question_digest, similarity)
        )

    async def feedback(
        self, *, tenant: str, entry_id: str, prompt: str | None, correct: bool
    ) -> FeedbackResult:
        """A user's verdict on an answer from this tenant's entry; EntryNotFound otherwise.

        `correct=False` with the question asked: the entry no longer answers it (or anything
        as far from it); without a question, or for the entry's own question, the entry goes.
        """
        store = self.cache.store
        listed = await store.get(entry_id)
        if listed is None or listed.entry.tenant != tenant:
            # Another tenant's entry is answered exactly like a missing one.
            raise EntryNotFound(f"no cache entry has id {entry_id!r} (it may have expired)")
        entry = listed.entry
        await self.audits.record_feedback(tenant, entry.model_id, correct=correct)
        if correct:
            return FeedbackResult(entry_id=entry_id, action="recorded")
        question = normalize_prompt(prompt) if prompt is not None else None
        if question is None or question == entry.prompt:
            await store.delete(entry_id)
            return FeedbackResult(entry_id=entry_id, action="deleted")
        vectors = await self.embedder.embed_many([question, entry.prompt])
        similarity = float(np.dot(vectors[0], vectors[1]))
        await store.dispute(entry_id, question_digest(question), similarity)
        return FeedbackResult(entry_id=entry_id, action="disputed")

    async def estimates(self, tenant: str | None) -> list[WrongHitEstimate]:
        """Per tenant and model (one tenant's only, unless `tenant` is None)."""
        rows = []
        for counts in await self.audits.read():
            if tenant is not None and counts.tenant != tenant:
                continue
            low, high = wilson(counts.disagreed, counts.checked)
            checked = counts.checked > 0
            rows.append(
                WrongHitEstimate(
                    tenant=counts.tenant,
                    model_id=counts.model_id,
                    checked=counts.checked,
                    disagreed=counts.disagreed,
                    rate=round(counts.disagreed / counts.checked, 6) if checked else None,
                    low=round(low, 6) if checked else None,
                    high=round(high, 6) if checked else None,
                    verification_usd=round(counts.usd_spent, 9),
                    feedback_correct=counts.feedback_correct,
                    feedback_wrong=counts.feedback_wrong,
                )
            )
        return rows
