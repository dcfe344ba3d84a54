"""`pairs` mode: score labeled question pairs the way the service decides a semantic hit."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import msgspec
import numpy as np
import numpy.typing as npt

from app.eval.scoring import PRECISIONS, at_threshold, recall_at_precision, roc_auc
from app.providers.embedders.base import Embedder
from app.service.guard import Guard
from app.service.near_miss import veto
from app.service.prompt import normalize_prompt
from app.service.verifier import Calibration, Verifier


class Pair(msgspec.Struct, frozen=True, kw_only=True):
    """One labeled pair (the data README's schema; extra fields are ignored). A file of one's
    own needs only the questions and the label."""

    question1: str
    question2: str
    label: int
    id: str = ""
    source: str = "pairs"


class PairReport(msgspec.Struct, kw_only=True):
    """Quality of the decision on one set of pairs."""

    n: int
    positives: int
    auc: float
    recall_at_precision: dict[str, float]
    at_default: dict[str, float]


class PairsResult(PairReport, kw_only=True):
    """Overall figures plus one report per source."""

    threshold: float
    # The guard's probability threshold when a guard decides (threshold is then the floor).
    guard_threshold: float | None = None
    # With the verifier: the combined score's threshold (it decides, not guard_threshold).
    verifier_threshold: float | None = None
    # VERIFIER=overlap: pairs whose word overlap reaches overlap_gate must also reach
    # gated_threshold (guard x verifier); the guard's threshold still decides the rest.
    overlap_gate: float | None = None
    gated_threshold: float | None = None
    by_source: dict[str, PairReport]


def load_pairs(path: Path) -> list[Pair]:
    """Read a pairs JSONL file."""
    decoder = msgspec.json.Decoder(Pair)
    return [decoder.decode(line) for line in path.read_bytes().splitlines() if line.strip()]


async def pair_scores(pairs: Sequence[Pair], embedder: Embedder) -> npt.NDArray[np.float64]:
    """Cosine similarity of each pair's normalized questions, as the KNN computes it."""
    texts = sorted({normalize_prompt(q) for p in pairs for q in (p.question1, p.question2)})
    vectors = await embedder.embed_many(texts)
    row = {text: i for i, text in enumerate(texts)}
    first = vectors[[row[normalize_prompt(p.question1)] for p in pairs]]
    second = vectors[[row[normalize_prompt(p.question2)] for p in pairs]]
    scores: npt.NDArray[np.float64] = np.einsum("ij,ij->i", first, second).astype(np.float64)
    return scores


def decision_scores(
    pairs: Sequence[Pair],
    cosines: npt.NDArray[np.float64],
    guard: Guard | None,
    floor: float,
    *,
    checks: bool = False,
) -> npt.NDArray[np.float64]:
    """What the service thresholds: the cosine, or with a guard its probability (0 below floor,
    and with `checks` 0 where a near-miss check vetoes)."""
    if guard is None:
        return cosines
    scores = np.zeros(len(pairs))
    for i, (pair, cosine) in enumerate(zip(pairs, cosines, strict=True)):
        query, cached = normalize_prompt(pair.question2), normalize_prompt(pair.question1)
        if cosine >= floor and not (checks and veto(query, cached) is not None):
            scores[i] = guard.probability(query, cached, float(cosine))
    return scores


async def verified_scores(
    pairs: Sequence[Pair],
    cosines: npt.NDArray[np.float64],
    guard: Guard,
    verifier: Verifier,
    calibration: Calibration,
) -> npt.NDArray[np.float64]:
    """What the service thresholds with the verifier on: the combined score of the pairs the
    screens (cosine and guard floors, near-miss checks) let through, 0 for the rest."""
    scores = np.zeros(len(pairs))
    through: list[tuple[int, str, str, float]] = []
    for i, (pair, cosine) in enumerate(zip(pairs, cosines, strict=True)):
        query, cached = normalize_prompt(pair.question2), normalize_prompt(pair.question1)
        probability = guard.probability(query, cached, float(cosine))
        if calibration.screen(query, cached, float(cosine), probability) is None:
            through.append((i, query, cached, probability))
    verified = await verifier.probabilities([(query, cached) for _, query, cached, _ in through])
    for (i, _, _, probability), checked in zip(through, verified, strict=True):
        scores[i] = calibration.score(probability, float(checked))
    return scores


async def gated_scores(
    pairs: Sequence[Pair],
    cosines: npt.NDArray[np.float64],
    guard: Guard,
    verifier: Verifier,
    calibration: Calibration,
    *,
    floor: float,
    verify_at: float,
) -> npt.NDArray[np.float64]:
    """What the service thresholds with VERIFIER=overlap: the guard's probability after the
    near-miss checks, lowered on the pairs whose words overlap past the calibration's gate to
    the verifier's combined score moved onto the guard's scale (Calibration.gated_score)."""
    scores = decision_scores(pairs, cosines, guard, floor, checks=True)
    gated: list[tuple[int, str, str]] = []
    for i, pair in enumerate(pairs):
        query, cached = normalize_prompt(pair.question2), normalize_prompt(pair.question1)
        if scores[i] > 0 and calibration.gated(query, cached):
            gated.append((i, query, cached))
    verified = await verifier.probabilities([(query, cached) for _, query, cached in gated])
    for (i, _, _), checked in zip(gated, verified, strict=True):
        combined = calibration.score(scores[i], float(checked))
        scores[i] = calibration.gated_score(scores[i], combined, guard.threshold, verify_at)
    return scores


def report(scores: npt.NDArray[np.float64], labels: Sequence[int], threshold: float) -> PairReport:
    """AUC, recall at each target precision, and at the threshold: precision, recall and the
    share of negative pairs served (PAWS and near-miss sets read directly from it)."""
    decision = at_threshold(scores, labels, threshold)
    negatives = [i for i, label in enumerate(labels) if label == 0]
    served = sum(1 for i in negatives if scores[i] >= threshold)
    return PairReport(
        n=len(labels),
        positives=int(sum(labels)),
        auc=round(roc_auc(scores, labels), 4),
        recall_at_precision={
            str(p): round(recall_at_precision(scores, labels, p), 4) for p in PRECISIONS
        },
        at_default={
            "precision": round(decision.precision, 4),
            "recall": round(decision.recall, 4),
            "negatives_served": round(served / len(negatives), 4) if negatives else 0.0,
        },
    )


def evaluate(
    pairs: Sequence[Pair],
    scores: npt.NDArray[np.float64],
    threshold: float,
    guard_threshold: float | None = None,
    verifier_threshold: float | None = None,
    *,
    gated: tuple[float, float] | None = None,
) -> PairsResult:
    """Overall and per-source reports; decisions at guard_threshold when a guard scored, at
    verifier_threshold when the verifier did."""
    labels = [p.label for p in pairs]
    decide = threshold if guard_threshold is None else guard_threshold
    if verifier_threshold is not None:
        decide = verifier_threshold
    overall = report(scores, labels, decide)
    by_source = {}
    for source in sorted({p.source for p in pairs}):
        index = [i for i, p in enumerate(pairs) if p.source == source]
        by_source[source] = report(scores[index], [labels[i] for i in index], decide)
    return PairsResult(
        **msgspec.structs.asdict(overall),
        threshold=threshold,
        guard_threshold=guard_threshold,
        verifier_threshold=verifier_threshold,
        overlap_gate=None if gated is None else gated[0],
        gated_threshold=None if gated is None else gated[1],
        by_source=by_source,
    )


def table(result: PairsResult) -> str:
    """The result as a Markdown table, one row per source and one overall."""
    head = "| set | n | AUC | R@P0.90 | R@P0.95 | R@P0.99 | P at t | R at t | neg. served at t |"
    decision = f"cosine >= {result.threshold}"
    if result.verifier_threshold is not None:
        decision += (
            ", the calibrated screens (guard floor, near-miss checks) and guard x verifier "
            f">= {result.verifier_threshold} (scores: the combined one)"
        )
    elif result.guard_threshold is not None:
        decision += f" and guard probability >= {result.guard_threshold} (scores: the guard's)"
        if result.overlap_gate is not None:
            decision += (
                f"; no near-miss veto; where the words overlap >= {result.overlap_gate}, also "
                f"guard x verifier >= {result.gated_threshold} (VERIFIER=overlap)"
            )
    lines = [
        f"Decision: {decision}",
        "",
        head,
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows: list[tuple[str, PairReport]] = [*result.by_source.items(), ("overall", result)]
    for name, r in rows:
        at = r.recall_at_precision
        lines.append(
            f"| {name} | {r.n} | {r.auc:.3f} | {at['0.9']:.3f} | {at['0.95']:.3f} | "
            f"{at['0.99']:.3f} | {r.at_default['precision']:.3f} | {r.at_default['recall']:.3f} | "
            f"{r.at_default['negatives_served']:.3f} |"
        )
    return "\n".join(lines)


def sweep_table(
    pairs: Sequence[Pair], scores: npt.NDArray[np.float64], thresholds: Sequence[float]
) -> str:
    """Precision and recall over a range of thresholds."""
    labels = [p.label for p in pairs]
    lines = ["| threshold | precision | recall |", "|---|---|---|"]
    for t in thresholds:
        d = at_threshold(scores, labels, t)
        lines.append(f"| {t:.3f} | {d.precision:.3f} | {d.recall:.3f} |")
    return "\n".join(lines)
