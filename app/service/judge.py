"""Is a KNN candidate above the cosine floor the same question? The guard, then the verifier.

Without a verifier the guard decides (its probability >= GUARD_THRESHOLD), and with
`checks` the near-miss checks veto what it would serve. `gated` (VERIFIER=overlap, the
default) adds the verifier where only it can tell: a candidate the guard and the checks would
serve whose words (nearly) all recur in the question must also pass the cross-encoder, since
then word order is what decides and neither the embedding nor the guard reads it. With the
verifier on every candidate (VERIFIER=on), the cascade its calibration was measured in
decides: cheap screens first (the cosine and guard floors, the near-miss checks for changed
numbers, negation, antonyms and swapped roles), then the cross-encoder reads the pair, and
the guard's and the verifier's evidence combined must reach the threshold a wrong-hit budget
maps to (see service/verifier.py). Either way the verifier runs only on candidates the
cheaper stages let through: the only ones where it can change the decision.
"""

from __future__ import annotations

import logging
import time
from typing import Literal

import msgspec

from app.cache.store import Candidate
from app.errors import SentinelError
from app.observability.recorder import NearMiss, Recorder, iso_utc
from app.service.guard import Guard
from app.service.near_miss import veto
from app.service.plan import Plan
from app.service.verifier import Calibration, Verifier

log = logging.getLogger("sentinel.service")


class Verdict(msgspec.Struct, frozen=True, kw_only=True):
    """Whether to serve a candidate, with the scores that decided it."""

    serve: bool
    guard_score: float | None = None
    # The combined score the budget's threshold applies to (None: no verifier ran).
    verifier_score: float | None = None
    # Which stage refused: "guard", "cosine", a near-miss check's name, "verifier".
    refused_by: str | None = None


class Judge:
    """The guard alone, or the guard and the verifier as calibrated."""

    def __init__(
        self,
        guard: Guard | None,
        verifier: Verifier | None = None,
        calibration: Calibration | None = None,
        *,
        checks: bool = False,
        gated: bool = False,
    ) -> None:
        if (verifier is None) != (calibration is None):
            raise ValueError("a verifier needs its calibration, and a calibration its verifier")
        if verifier is not None and guard is None:
            raise ValueError("the verifier is calibrated behind the guard: it needs one")
        self.guard = guard
        self.verifier = verifier
        self.calibration = calibration
        # Without the verifier: veto the guard's hits that a near-miss check fires on.
        self.checks = checks
        # The guard and the checks decide; the verifier reads only the high-overlap pairs.
        self.gated = gated and verifier is not None
        if gated and not checks:
            raise ValueError("VERIFIER=overlap runs the near-miss checks before the verifier")

    @property
    def mode(self) -> Literal["on", "overlap", "checks", "off"]:
        """VERIFIER as this judge runs it: "on", "overlap", "checks" or "off"."""
        if self.verifier is not None:
            return "overlap" if self.gated else "on"
        return "checks" if self.checks else "off"

    async def __call__(
        self,
        question: str,
        cached: str,
        similarity: float,
        threshold: float | None,
        guard_threshold: float | None = None,
    ) -> Verdict:
        """The verdict on serving `cached`'s answer for `question` (`threshold`: the budget's
        for the verifier; `guard_threshold`: the budget's for the guard, VERIFIER=overlap)."""
        guard = self.guard
        if guard is None:
            return Verdict(serve=True)
        score = guard.probability(question, cached, similarity)
        calibration = self.calibration
        if self.verifier is None or calibration is None or threshold is None:
            return self._guarded(guard, question, cached, score)
        if self.gated:
            verdict = self._guarded(guard, question, cached, score, guard_threshold)
            if not verdict.serve or not calibration.gated(question, cached):
                return verdict
        elif (refused := calibration.screen(question, cached, similarity, score)) is not None:
            return Verdict(serve=False, guard_score=score, refused_by=refused)
        return await self._verified(self.verifier, question, cached, score, threshold)

    def _guarded(
        self, guard: Guard, question: str, cached: str, score: float, at: float | None = None
    ) -> Verdict:
        """The guard's decision (at its threshold, or a budget's if stricter), with the
        near-miss checks' veto when they run."""
        if score < (guard.threshold if at is None else max(at, guard.threshold)):
            return Verdict(serve=False, guard_score=score, refused_by="guard")
        vetoed = veto(question, cached) if self.checks else None
        if vetoed is not None:
            return Verdict(serve=False, guard_score=score, refused_by=vetoed.value)
        return Verdict(serve=True, guard_score=score)

    async def _verified(
        self, verifier: Verifier, question: str, cached: str, score: float, threshold: float
    ) -> Verdict:
        """The verifier's verdict on a candidate the cheaper stages let through."""
        assert self.calibration is not None  # set with the verifier
        try:
            probability = await verifier.probability(question, cached)
        except SentinelError as exc:
            # Unverified is not served: a miss costs a provider call, a wrong hit trust.
            log.warning("candidate not verified, not served: %s", exc.message)
            return Verdict(serve=False, guard_score=score, refused_by="verifier")
        combined = self.calibration.score(score, probability)
        return Verdict(
            serve=combined >= threshold,
            guard_score=score,
            verifier_score=combined,
            refused_by=None if combined >= threshold else "verifier",
        )

    async def decide(
        self, plan: Plan, question: str, candidate: Candidate, metrics: Recorder, *, nearest: bool
    ) -> Verdict:
        """The verdict on a KNN candidate for a planned request, timed and counted; a refusal
        of the `nearest` candidate is kept as the request's near miss, for the dashboard."""
        started = time.perf_counter()
        verdict = await self(
            question,
            candidate.prompt,
            candidate.similarity,
            plan.verify_threshold,
            plan.guard_threshold,
        )
        metrics.layer("judge", time.perf_counter() - started)
        near_miss = None
        if not verdict.serve and nearest:
            near_miss = NearMiss(
                at=iso_utc(time.time()),
                tenant=plan.tenant,
                model=plan.model_id,
                prompt=question,
                nearest_prompt=candidate.prompt,
                nearest_entry_id=candidate.entry_id,
                similarity=round(candidate.similarity, 4),
                guard_score=verdict.guard_score,
                verifier_score=verdict.verifier_score,
                stage=verdict.refused_by or "guard",
            )
        metrics.judged(
            served=verdict.serve,
            similarity=candidate.similarity,
            guard_score=verdict.guard_score,
            near_miss=near_miss,
            verifier_score=verdict.verifier_score,
        )
        return verdict
