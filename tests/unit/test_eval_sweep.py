"""app.eval's workload sweep: each query's candidates scored like the service's judge."""

from __future__ import annotations

import pytest

from app.eval.sweep import CASCADE_SWEEP, GUARD_SWEEP, Sweeper, grid
from app.providers.embedders.local import DEFAULT_MODEL
from app.service.guard import Guard
from app.service.near_miss import veto
from app.service.verifier import Calibration

YEAR = ("what was the population of france in 2020", "what was the population of france in 2019")
SAME = ("what was the population of france in 2020", "what was france's population in 2020")


@pytest.fixture(scope="module")
def guard() -> Guard:
    shipped = Guard.for_embedder(DEFAULT_MODEL)
    assert shipped is not None
    return shipped


def test_the_grid_holds_the_decision_itself() -> None:
    assert grid(guarded=True, cascade=False, decision=0.8) == GUARD_SWEEP
    cascade = grid(guarded=True, cascade=True, decision=0.9837)
    assert 0.9837 in cascade
    assert cascade == sorted(cascade)
    assert set(CASCADE_SWEEP) < set(cascade)
    assert 0.982 in CASCADE_SWEEP  # the shipped calibration's default threshold


def test_without_a_guard_the_cosine_is_swept_as_the_floor() -> None:
    sweeper = Sweeper(None, 0.9)
    sweeper.add("q0", [])
    sweeper.add("q1", [(0, "a", 0.95), (7, "b", 0.85)])
    sweeper.add("q2", [(1, "c", 0.80)])
    assert sweeper.decide(0.9) == [None, 0, None]
    assert sweeper.decide(0.8) == [None, 0, 1]
    assert sweeper.decide(0.99) == [None, None, None]


def test_the_guard_decides_above_the_floor_and_the_checks_veto(guard: Guard) -> None:
    query, near = YEAR
    assert veto(query, near) is not None  # a changed number
    cosine = 0.97  # what an embedder gives such a pair; the guard alone would serve it
    assert guard.probability(query, near, cosine) >= guard.threshold
    lower = 0.90
    fair = guard.probability(query, SAME[1], lower)
    candidates = [(3, near, cosine), (5, SAME[1], lower)]

    unchecked = Sweeper(guard, 0.70)
    unchecked.add(query, candidates)
    assert unchecked.decide(guard.threshold) == [3]

    checked = Sweeper(guard, 0.70, checks=True)
    checked.add(query, candidates)
    assert checked.queries[0][0].score is None  # vetoed at every threshold
    # The vetoed neighbour never serves; a lower one still may, as in the service.
    assert checked.decide(min(fair, guard.threshold)) == [5]
    assert checked.decide(fair + 1e-6) == [None]

    floored = Sweeper(guard, 0.95, checks=True)
    floored.add(query, candidates)
    assert floored.decide(0.05) == [None]  # under the cosine floor nothing is judged


def test_the_cascade_needs_its_verifier(guard: Guard) -> None:
    with pytest.raises(ValueError, match="cascade"):
        Sweeper(guard, 0.7, calibration=Calibration.for_model())
