"""The semantic layer of a lookup: embed the question, KNN within its scope, judge each
candidate, read the one served; and the paraphrase alias that lets the same question skip all
that next time (cache/aliases.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import NamedTuple

from app.cache.aliases import Alias
from app.cache.errors import CacheBypassed
from app.cache.store import Entry
from app.providers.embedders.base import Vector
from app.service.embedding import Embedding
from app.service.judge import Judge, Verdict
from app.service.plan import Plan
from app.service.request_cache import RequestCache

# How long an alias waits for others to share its write (seconds) when other searches are under
# way; alone (c=1) it is written at once, rather than later beside another request's ONNX run.
# Until it is written a repeated paraphrase is embedded and judged again: slower, never wrong.
ALIAS_WINDOW = 0.02


class SemanticMatch(NamedTuple):
    """The entry a question is served semantically, how similar, and what judged it."""

    entry: Entry
    similarity: float
    verdict: Verdict


class Search(NamedTuple):
    """What the semantic layer found: a match, else the question's vector (for storing), whether
    the cache was bypassed and whether embedding failed."""

    match: SemanticMatch | None = None
    vector: Vector | None = None
    bypass: bool = False
    embed_failed: bool = False


def from_alias(entry: Entry, alias: Alias) -> SemanticMatch:
    """A match served through an alias: as judged when the alias was written."""
    verdict = Verdict(
        serve=True, guard_score=alias.guard_score, verifier_score=alias.verifier_score
    )
    return SemanticMatch(entry, alias.similarity, verdict)


class SemanticLayer:
    """Embed → KNN → judge → read; then (in the background) alias the question to its entry."""

    def __init__(
        self,
        cache: RequestCache,
        embed: Embedding,
        judge: Judge,
        *,
        top_k: int,
        alias: bool = True,
    ) -> None:
        self.cache = cache
        self.embed = embed
        self.judge = judge
        self.top_k = top_k
        self.alias = alias  # PARAPHRASE_ALIAS
        # Aliases waiting for the write under way (question's entry id → alias), and that write.
        self._queued: dict[str, Alias] = {}
        self._writing: asyncio.Task[None] | None = None
        # Searches under way (other requests whose aliases may share a write).
        self._searching = 0

    @staticmethod
    def accepts(plan: Plan) -> Callable[[Entry, Alias], bool]:
        """Whether an alias's entry may serve this request: the same scope, a similarity the
        request's threshold and the entry's own floor allow, and not a question it was told
        never to answer (feedback, verification)."""

        def accept(entry: Entry, alias: Alias) -> bool:
            return (
                entry.scope == plan.scope
                and alias.similarity >= plan.threshold
                and entry.serves(plan.question_digest, alias.similarity)
            )

        return accept

    async def search(self, plan: Plan, question: str) -> Search:
        """The best candidate the judge serves and the entry still allows, else none."""
        self._searching += 1
        try:
            return await self._search(plan, question)
        finally:
            self._searching -= 1

    async def _search(self, plan: Plan, question: str) -> Search:
        vector = await self.embed(question)
        if vector is None:
            return Search(embed_failed=True)
        try:
            candidates = await self.cache.nearest(
                vector, scope=plan.scope, k=self.top_k, floor=plan.threshold
            )
            for rank, candidate in enumerate(candidates):
                if candidate.similarity < plan.threshold:
                    break
                verdict = await self.judge.decide(
                    plan, question, candidate, self.cache.metrics, nearest=rank == 0
                )
                if not verdict.serve:
                    continue  # a near miss; a lower neighbour may still be the same question
                # What verification and feedback taught this entry: a floor of its own, and
                # questions it must never answer.
                similarity = candidate.similarity
                if candidate.entry is not None:  # read by the search itself: no second read
                    entry = self.cache.found(candidate.entry, plan.question_digest, similarity)
                else:
                    entry = await self.cache.entry(
                        candidate.entry_id,
                        "semantic lookup",
                        accept=lambda e: e.serves(plan.question_digest, similarity),  # noqa: B023
                    )
                if entry is not None:  # None: expired since the KNN, or refused
                    return Search(match=SemanticMatch(entry, similarity, verdict), vector=vector)
        except CacheBypassed as exc:
            self.cache.skipped(exc)
            return Search(vector=vector, bypass=True)
        return Search(vector=vector)

    def remember(self, plan: Plan, match: SemanticMatch) -> None:
        """Alias this question to the entry that served it, after the answer (never waited for).

        While other searches are under way an alias waits ALIAS_WINDOW for theirs; aliases
        queued meanwhile, or while a write is under way, go together: one round trip for all of
        them (several per write under load, one at c=1)."""
        if not self.alias:
            return
        self._queued[plan.entry_id] = Alias(
            target=match.entry.id,
            similarity=match.similarity,
            guard_score=match.verdict.guard_score,
            verifier_score=match.verdict.verifier_score,
        )
        if self._writing is None:
            window = ALIAS_WINDOW if self._searching else 0.0
            self._writing = asyncio.get_running_loop().create_task(
                self._write(window), name="sentinel-alias"
            )

    async def _write(self, window: float) -> None:
        try:
            if window:
                # Let the aliases of the hits under way join this write (under load a round
                # trip per alias cost the event loop more than the write itself).
                await asyncio.sleep(window)
            while self._queued:
                batch, self._queued = self._queued, {}
                await self.cache.alias(batch)
        finally:
            self._writing = None

    async def drain(self) -> None:
        """Wait for the alias writes under way (offline replays, tests)."""
        while self._writing is not None:
            await asyncio.gather(self._writing, return_exceptions=True)
