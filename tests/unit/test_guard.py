"""The hit guard: the shipped parameters, its features and how settings choose the decision."""

from __future__ import annotations

import math

import pytest

from app.providers.embedders.local import BASE_MODEL, DEFAULT_MODEL
from app.service.guard import FEATURES, Guard, GuardModel, configured_decision, features
from app.settings import DEFAULT_SIMILARITY_THRESHOLD, load_settings


@pytest.fixture(scope="module")
def guard() -> Guard:
    shipped = Guard.for_embedder(DEFAULT_MODEL)
    assert shipped is not None
    return shipped


def test_a_guard_ships_for_the_default_embedder_only(guard: Guard) -> None:
    assert guard.embedder == DEFAULT_MODEL
    assert 0.0 < guard.min_cosine < 1.0
    assert 0.0 < guard.threshold < 1.0
    assert len(guard.model.idf) > 1000  # an IDF table, not a stub
    assert Guard.for_embedder(BASE_MODEL) is None  # its cosine scale was never fit


def test_features_see_what_a_cosine_blurs() -> None:
    idf = {"what": 1.0, "is": 1.0, "the": 1.0, "of": 1.0, "atomic": 4.0, "mass": 4.0}
    row = named(
        features(
            "what is the atomic mass of sodium",
            "what is the atomic mass of hydrogen",
            0.9,
            idf,
            8.0,
        )
    )
    assert row["cosine"] == 0.9
    assert row["jaccard"] == pytest.approx(6 / 8)
    assert row["max_idf_unmatched"] == 1.0  # both differing words are unseen, so rarest
    assert row["numbers_differ"] == 0.0
    numbers = named(features("born in 1990", "born in 1991", 0.95, idf, 8.0))
    assert numbers["numbers_differ"] == 1.0
    negation = named(features("is it safe", "is it not safe", 0.95, idf, 8.0))
    assert negation["negation_mismatch"] == 1.0
    wh = named(features("where was he born", "when was he born", 0.95, idf, 8.0))
    assert wh["wh_mismatch"] == 1.0


def test_probability_is_the_logistic_of_the_standardised_features(guard: Guard) -> None:
    m = guard.model
    a, b, cosine = "how do i learn python fast", "what is the fastest way to learn python", 0.83
    row = features(a, b, cosine, m.idf, max(m.idf.values()))
    z = m.weights[-1] + sum(
        w * (x - mu) / sd for w, x, mu, sd in zip(m.weights, row, m.mean, m.std, strict=False)
    )
    assert guard.probability(a, b, cosine) == pytest.approx(1 / (1 + math.exp(-z)), rel=1e-9)


def test_higher_cosine_never_lowers_the_probability_of_the_same_pair(guard: Guard) -> None:
    a, b = "how do i learn python fast", "what is the fastest way to learn python"
    scores = [guard.probability(a, b, c) for c in (0.7, 0.8, 0.9, 0.99)]
    assert scores == sorted(scores)
    assert scores[0] < guard.threshold < scores[-1]


def test_threshold_override(guard: Guard) -> None:
    strict = Guard(guard.model, threshold=0.99)
    a, b = "how do i learn python fast", "how can i learn python fast"
    assert guard.accepts(a, b, 0.97)
    assert not strict.accepts(a, b, 0.8)


def test_mismatched_parameters_are_refused(guard: Guard) -> None:
    broken = GuardModel(**{**_fields(guard.model), "weights": guard.model.weights[:-1]})
    with pytest.raises(ValueError, match="do not match"):
        Guard(broken)


def test_settings_choose_the_decision() -> None:
    guard, floor = configured_decision(load_settings({}), DEFAULT_MODEL)
    assert guard is not None
    assert floor == guard.min_cosine
    off, floor_off = configured_decision(load_settings({"GUARD": "off"}), DEFAULT_MODEL)
    assert off is None
    assert floor_off == DEFAULT_SIMILARITY_THRESHOLD
    unfit, floor_unfit = configured_decision(load_settings({}), "jina-embeddings-v3")
    assert unfit is None
    assert floor_unfit == DEFAULT_SIMILARITY_THRESHOLD
    tuned, tuned_floor = configured_decision(
        load_settings({"SIMILARITY_THRESHOLD": "0.8", "GUARD_THRESHOLD": "0.7"}), DEFAULT_MODEL
    )
    assert tuned is not None
    assert tuned.threshold == 0.7
    assert tuned_floor == 0.8


def named(row: list[float]) -> dict[str, float]:
    return dict(zip(FEATURES, row, strict=True))


def _fields(model: GuardModel) -> dict[str, object]:
    return {name: getattr(model, name) for name in model.__struct_fields__}
