"""Ranking and decision metrics for "same question?" scores: AUC, recall at a precision."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import numpy as np
import numpy.typing as npt

PRECISIONS = (0.9, 0.95, 0.99)


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """Precision and recall of predicting "duplicate" when score >= threshold."""

    threshold: float
    precision: float
    recall: float


def _arrays(
    scores: Sequence[float] | npt.NDArray[np.float64], labels: Sequence[int]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int8]]:
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int8)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError("scores and labels must be 1-d and of the same length")
    return s, y


def roc_auc(scores: Sequence[float] | npt.NDArray[np.float64], labels: Sequence[int]) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties)."""
    s, y = _arrays(scores, labels)
    positives = int(y.sum())
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_scores = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1  # average rank of a tie group
        i = j + 1
    rank_sum = float(ranks[y == 1].sum())
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def curve(
    scores: Sequence[float] | npt.NDArray[np.float64], labels: Sequence[int]
) -> list[Decision]:
    """Precision and recall at every distinct threshold, from the highest score down."""
    s, y = _arrays(scores, labels)
    positives = int(y.sum())
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    true_pos = np.cumsum(y)
    predicted = np.arange(1, len(s) + 1)
    points = []
    for index in range(len(s)):
        # A threshold keeps every pair with the same score, so evaluate at the last of a tie.
        if index + 1 < len(s) and s[index + 1] == s[index]:
            continue
        points.append(
            Decision(
                threshold=float(s[index]),
                precision=float(true_pos[index] / predicted[index]),
                recall=float(true_pos[index] / positives) if positives else 0.0,
            )
        )
    return points


def recall_at_precision(
    scores: Sequence[float] | npt.NDArray[np.float64], labels: Sequence[int], precision: float
) -> float:
    """The highest recall among thresholds whose precision is at least `precision` (0 if none)."""
    return max(
        (point.recall for point in curve(scores, labels) if point.precision >= precision),
        default=0.0,
    )


def at_threshold(
    scores: Sequence[float] | npt.NDArray[np.float64], labels: Sequence[int], threshold: float
) -> Decision:
    """Precision and recall when "duplicate" means score >= threshold."""
    s, y = _arrays(scores, labels)
    chosen = s >= threshold
    true_pos = int((chosen & (y == 1)).sum())
    predicted = int(chosen.sum())
    positives = int(y.sum())
    return Decision(
        threshold=threshold,
        precision=true_pos / predicted if predicted else 1.0,
        recall=true_pos / positives if positives else 0.0,
    )
