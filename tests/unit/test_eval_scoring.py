from __future__ import annotations

import math

import numpy as np
import pytest

from app.eval.pairs import report
from app.eval.scoring import at_threshold, curve, recall_at_precision, roc_auc


def test_auc_of_perfect_random_and_inverted_rankings() -> None:
    labels = [0, 0, 1, 1]
    assert roc_auc([0.1, 0.2, 0.8, 0.9], labels) == 1.0
    assert roc_auc([0.9, 0.8, 0.2, 0.1], labels) == 0.0
    assert roc_auc([0.5, 0.5, 0.5, 0.5], labels) == 0.5


def test_auc_counts_pairs_by_hand() -> None:
    # positives 0.7, 0.4; negatives 0.6, 0.3, 0.4 -> pairs won: 0.7 beats 3, 0.4 beats 0.3
    # and ties 0.4 (half) -> (3 + 1 + 0.5) / 6
    scores = [0.7, 0.4, 0.6, 0.3, 0.4]
    labels = [1, 1, 0, 0, 0]
    assert roc_auc(scores, labels) == pytest.approx(4.5 / 6)
    assert math.isnan(roc_auc([0.1, 0.2], [1, 1]))


def test_curve_and_recall_at_precision() -> None:
    scores = [0.95, 0.9, 0.8, 0.7, 0.6, 0.5]
    labels = [1, 1, 0, 1, 0, 1]
    points = curve(scores, labels)
    assert [p.threshold for p in points] == scores
    assert points[1].precision == 1.0
    assert points[1].recall == 0.5
    assert points[3].precision == 0.75
    assert points[3].recall == 0.75
    assert recall_at_precision(scores, labels, 0.99) == 0.5
    assert recall_at_precision(scores, labels, 0.75) == 0.75
    assert recall_at_precision(scores, labels, 0.6) == 1.0


def test_ties_are_decided_together() -> None:
    points = curve([0.9, 0.9, 0.1], [1, 0, 1])
    assert len(points) == 2
    assert points[0].precision == 0.5
    assert points[0].recall == 0.5


def test_at_threshold() -> None:
    decision = at_threshold([0.95, 0.9, 0.8, 0.7], [1, 0, 1, 0], 0.85)
    assert decision.precision == 0.5
    assert decision.recall == 0.5
    nothing = at_threshold([0.1], [1], 0.5)
    assert nothing.precision == 1.0
    assert nothing.recall == 0.0


def test_the_pairs_report_gives_the_share_of_negatives_served() -> None:
    result = report(np.array([0.9, 0.8, 0.1, 0.7]), [1, 0, 0, 0], 0.75)
    assert result.at_default["negatives_served"] == round(1 / 3, 4)
    assert result.at_default["recall"] == 1.0
