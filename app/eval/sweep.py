"""Workload sweeps: what the service would have served at other thresholds, from the KNN
candidates of one replay, scored the way the configured decision scores them.

The replay stores every query after it is processed, hit or not, so the index (and so each
query's candidates) does not depend on the threshold: one replay gives the whole curve.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from app.service.guard import Guard
from app.service.near_miss import veto
from app.service.verifier import Calibration, Verifier

# The thresholds a sweep scores by default: the cosine alone, the guard's probability, the
# cascade's combined score (dense near the top, where the calibrated thresholds lie).
COSINE_SWEEP = [round(0.70 + 0.01 * i, 2) for i in range(30)]
GUARD_SWEEP = [round(0.05 * i, 2) for i in range(1, 20)]
CASCADE_SWEEP = [
    *(0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.975),
    *(round(0.98 + 0.001 * i, 3) for i in range(20)),
]


def grid(*, guarded: bool, cascade: bool, decision: float) -> list[float]:
    """The default sweep for a decision, with the decision's own threshold on it."""
    values = CASCADE_SWEEP if cascade else GUARD_SWEEP if guarded else COSINE_SWEEP
    return sorted({*values, decision})


class Scored(msgspec.Struct, frozen=True):
    """A KNN neighbour as the replay saw it: the stream position it stores, its cosine, and
    the score a swept threshold applies to (None: a stage the sweep does not move refused)."""

    source: int
    cosine: float
    score: float | None


class Sweeper:
    """Scores each query's KNN candidates like the service's judge, for any threshold.

    Without a guard the score is the cosine (the swept threshold is the floor); with one it is
    the guard's probability above the cosine floor, None where a near-miss check vetoes
    (`checks`); with the verifier, the calibrated combined score of the candidates the screens
    let through (the cross-encoder runs once, in batches, at `finish`). `gated_at` (VERIFIER=
    overlap, the verifier's threshold) keeps the guard's probability after the checks as the
    score, lowered where the pair's words overlap past the calibration's gate to the
    verifier's moved score (Calibration.gated_score).
    """

    def __init__(
        self,
        guard: Guard | None,
        floor: float,
        *,
        checks: bool = False,
        verifier: Verifier | None = None,
        calibration: Calibration | None = None,
        gated_at: float | None = None,
    ) -> None:
        if (verifier is None) != (calibration is None) or (verifier and guard is None):
            raise ValueError("the cascade needs the guard, the verifier and its calibration")
        self.gated_at = gated_at if calibration is not None else None
        self.guard = guard
        self.floor = floor
        self.checks = checks
        self.verifier = verifier
        self.calibration = calibration
        self.queries: list[list[Scored]] = []
        # Candidates the verifier must read: (query index, rank, query, cached, guard score).
        self._pending: list[tuple[int, int, str, str, float]] = []

    def add(self, query: str, found: Sequence[tuple[int, str, float]]) -> None:
        """One query's candidates, nearest first, as (stream position, prompt, cosine)."""
        scored = []
        for rank, (source, cached, cosine) in enumerate(found):
            scored.append(Scored(source, cosine, self._score(query, cached, cosine, rank)))
        self.queries.append(scored)

    def _score(self, query: str, cached: str, cosine: float, rank: int) -> float | None:
        guard = self.guard
        if guard is None:
            return cosine
        probability = guard.probability(query, cached, cosine)
        if self.gated_at is not None and self.calibration is not None:
            if veto(query, cached) is not None:
                return None
            if self.calibration.gated(query, cached):
                self._pending.append((len(self.queries), rank, query, cached, probability))
            return probability  # lowered at `finish` if the verifier reads it
        if self.calibration is not None:
            if self.calibration.screen(query, cached, cosine, probability) is not None:
                return None
            self._pending.append((len(self.queries), rank, query, cached, probability))
            return None  # until `finish` reads the pair
        if self.checks and veto(query, cached) is not None:
            return None
        return probability

    async def finish(self) -> None:
        """Run the verifier on the candidates the screens let through (no-op without one)."""
        if self.verifier is None or self.calibration is None or not self._pending:
            return
        pairs = [(query, cached) for _, _, query, cached, _ in self._pending]
        verified = await self.verifier.probabilities(pairs)
        for (i, rank, _, _, guard), probability in zip(self._pending, verified, strict=True):
            scored = self.queries[i][rank]
            score = self.calibration.score(guard, float(probability))
            if self.gated_at is not None and self.guard is not None:
                score = self.calibration.gated_score(
                    guard, score, self.guard.threshold, self.gated_at
                )
            self.queries[i][rank] = msgspec.structs.replace(scored, score=score)
        self._pending = []

    def decide(self, value: float) -> list[int | None]:
        """What the service would have served at `value` (first passing neighbour), per query."""
        floor = self.floor if self.guard is not None else value
        served: list[int | None] = []
        for found in self.queries:
            choice = None
            for c in found:
                if c.cosine < floor:
                    break
                if c.score is not None and c.score >= value:
                    choice = c.source
                    break
            served.append(choice)
        return served
