"""The hit verifier: the shipped cross-encoder, its hash, calibration and behaviour on pairs."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import numpy as np
import pytest

from app.errors import StartupError, VerificationError
from app.eval.scoring import roc_auc
from app.eval.workload import ReplayProvider
from app.providers.embedders.local import DEFAULT_MODEL, LocalEmbedder
from app.providers.upstreams.router import ProviderRouter
from app.service.guard import Guard
from app.service.interval import wilson
from app.service.near_miss import Check
from app.service.plan import Ask, Planner
from app.service.prompt import normalize_prompt
from app.service.verifier import (
    DATA_DIR,
    MODEL_SHA256,
    VERIFIER_MODEL,
    Calibration,
    Verifier,
    combined_score,
)

PROBES = Path(__file__).parents[1] / "data" / "near_miss_probes.jsonl"
PAIRS = [
    ("How do I stop being so hard on myself?", "How can I stop going hard on myself?"),
    ("What is the atomic mass of sodium?", "What is the atomic mass of hydrogen?"),
    ("Is tea healthier than coffee?", "Is coffee healthier than tea?"),
]


@pytest.fixture(scope="module")
async def verifier() -> AsyncIterator[Verifier]:
    loaded = await Verifier.load()
    yield loaded
    await loaded.aclose()


def test_the_shipped_model_has_the_pinned_hash_and_fits_the_budget() -> None:
    path = DATA_DIR / f"{VERIFIER_MODEL}.onnx"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == MODEL_SHA256[VERIFIER_MODEL]
    assert path.stat().st_size < 25_000_000
    assert Calibration.for_model().sha256 == MODEL_SHA256[VERIFIER_MODEL]


def test_a_changed_model_file_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "verifier.onnx"
    shutil.copyfile(DATA_DIR / f"{VERIFIER_MODEL}.onnx", bad)
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0x01
    bad.write_bytes(bytes(data))
    with pytest.raises(StartupError, match="sha256"):
        Verifier.load_sync(model_path=bad)
    with pytest.raises(StartupError, match="unknown verifier model"):
        Verifier.load_sync(model="no-such-model")


async def test_probabilities_have_one_value_per_pair(verifier: Verifier) -> None:
    p = await verifier.probabilities(PAIRS)
    assert p.shape == (3,)
    assert np.all((p > 0) & (p < 1))
    assert (await verifier.probabilities([])).shape == (0,)
    assert await verifier.probability(*PAIRS[0]) == pytest.approx(p[0], abs=1e-6)


async def test_symmetric_scores_do_not_depend_on_which_side_is_cached() -> None:
    both = await Verifier.load(symmetric=True)
    try:
        forward = await both.probabilities(PAIRS)
        backward = await both.probabilities([(b, a) for a, b in PAIRS])
        np.testing.assert_allclose(forward, backward, atol=1e-5)
    finally:
        await both.aclose()


async def test_scores_are_deterministic_and_batch_invariant(verifier: Verifier) -> None:
    batched = await verifier.probabilities(PAIRS)
    again = await verifier.probabilities(PAIRS)
    alone = [await verifier.probability(a, b) for a, b in PAIRS]
    np.testing.assert_array_equal(batched, again)
    # The model quantizes activations over a whole run, so each pair runs alone: its score
    # is the same, bit for bit, whatever it is verified with (pairs of different lengths).
    np.testing.assert_array_equal(batched, alone)
    reordered = await verifier.probabilities([PAIRS[2], PAIRS[0]])
    np.testing.assert_array_equal(reordered, [batched[2], batched[0]])


async def test_concurrent_calls_run_off_the_loop(verifier: Verifier) -> None:
    results = await asyncio.gather(*(verifier.probability(a, b) for a, b in PAIRS * 3))
    np.testing.assert_allclose(results[:3], results[3:6], atol=1e-4)


async def test_hand_written_paraphrases_outrank_near_misses(verifier: Verifier) -> None:
    rows = [json.loads(line) for line in PROBES.read_text().splitlines() if line.strip()]
    p = await verifier.probabilities([(r["question2"], r["question1"]) for r in rows])
    labels = [r["label"] for r in rows]
    # The verifier alone, before any near-miss check (training/verifier/results.md).
    assert roc_auc(p, labels) > 0.75


async def test_a_closed_verifier_refuses_work() -> None:
    closing = await Verifier.load()
    await closing.aclose()
    await closing.aclose()  # idempotent
    with pytest.raises(VerificationError, match="closed"):
        await closing.probability(*PAIRS[0])


def test_calibration_maps_a_budget_to_a_threshold() -> None:
    cal = Calibration.for_model()
    assert cal.threshold == cal.threshold_for(cal.max_wrong_hit_rate)
    budgets = [0.01, 0.02, 0.05, 0.1, 0.2]
    thresholds = [cal.threshold_for(b) for b in budgets]
    assert thresholds == sorted(thresholds, reverse=True)  # a looser budget never raises it
    points = sorted(cal.points, key=lambda p: p.threshold)
    assert [p.served for p in points] == sorted((p.served for p in points), reverse=True)
    # Every point at or above the default threshold kept the budget on validation data.
    assert all(
        p.wrong_hit_rate <= cal.max_wrong_hit_rate for p in points if p.threshold >= cal.threshold
    )


def test_with_verifier_overlap_a_budget_moves_the_guard_and_the_verifier_together() -> None:
    cal = Calibration.for_model()
    assert cal.gated_points, "the shipped calibration has VERIFIER=overlap's own curve"
    # The default budget keeps the default decision.
    assert cal.gated_thresholds(cal.max_wrong_hit_rate) == (cal.guard_threshold, cal.threshold)
    budgets = [0.0, 0.02, 0.05, 0.09, 0.1, 0.3]
    mapped = [cal.gated_thresholds(b) for b in budgets]
    guards = [g for g, _ in mapped]
    assert guards == sorted(guards, reverse=True)  # a looser budget never raises it
    assert min(guards) == cal.guard_threshold  # nor loosens the default decision
    assert max(guards) > cal.guard_threshold  # a strict one tightens every hit, not only gated
    for guard, verifier in mapped:
        # At the pair, a gated candidate's moved score sits exactly on the guard's threshold.
        combined = Calibration.gated_score(1.0, verifier, cal.guard_threshold, cal.threshold)
        assert combined == pytest.approx(guard)
    # Every point of the curve from a budget's threshold on kept that budget on validation.
    for budget, (guard, _) in zip(budgets, mapped, strict=True):
        kept = [p for p in cal.gated_points if p.threshold >= guard]
        assert all(p.wrong_hit_rate <= budget for p in kept) or guard == max(guards)
    # A calibration file from before the gated curve: the budget moves the verifier alone.
    old = msgspec.structs.replace(cal, gated_points=[])
    assert old.gated_thresholds(0.02) == (old.guard_threshold, old.threshold_for(0.02))


def test_the_planner_maps_the_default_and_each_requests_budget() -> None:
    cal = Calibration.for_model()
    # The replays' provider: a real ChatProvider, never called here (planning does no I/O).
    router = ProviderRouter({"replay": ReplayProvider()}, "replay")
    common = {"providers": router, "similarity_threshold": 0.7, "ttl": 60}
    common |= {"max_prompt_chars": 1000, "calibration": cal}
    # VERIFIER=overlap with MAX_WRONG_HIT_RATE=0.02: a request without a budget gets it.
    gated = Planner(**common, max_wrong_hit_rate=0.02, gated=True)
    plain = gated.plan(Ask.of_prompt("How do I learn the guitar?"))
    assert (plain.guard_threshold, plain.verify_threshold) == cal.gated_thresholds(0.02)
    assert gated.default_verify_threshold() == cal.gated_thresholds(0.02)[1]
    # A request's own budget wins.
    own = gated.plan(Ask.of_prompt("How do I learn the guitar?", max_wrong_hit_rate=0.5))
    assert (own.guard_threshold, own.verify_threshold) == cal.gated_thresholds(0.5)
    # No budget anywhere: the guard's own threshold, the calibration's verifier threshold.
    default = Planner(**common, gated=True).plan(Ask.of_prompt("How do I learn the guitar?"))
    assert (default.guard_threshold, default.verify_threshold) == (None, cal.threshold)
    # VERIFIER=on: a budget moves the cascade's threshold only.
    cascade = Planner(**common, max_wrong_hit_rate=0.02).plan(Ask.of_prompt("Why?"))
    assert (cascade.guard_threshold, cascade.verify_threshold) == (None, cal.threshold_for(0.02))


def test_wilson_upper_bound() -> None:
    assert wilson(0, 0)[1] == 1.0
    assert 0.0 < wilson(0, 100)[1] < 0.04
    assert wilson(5, 100)[1] > 0.05


def test_screen_applies_the_cheaper_stages_of_the_calibrated_cascade() -> None:
    cal = Calibration.for_model()
    same = ("How can I learn Python fast?", "How do I learn Python quickly?")
    assert cal.screen(*same, cal.min_cosine - 0.01, 1.0) == "cosine"
    assert cal.screen(*same, 0.95, 0.95) is None
    if cal.min_guard > 0:
        assert cal.screen(*same, 0.95, cal.min_guard - 0.01) == "guard"
    swapped = ("Is tea healthier than coffee?", "Is coffee healthier than tea?")
    assert cal.screen(*swapped, 0.99, 0.99) == ("swap" if "swap" in cal.checks else None)


def test_score_combines_guard_and_verifier_as_calibrated() -> None:
    cal = Calibration.for_model()
    assert {Check(c) for c in cal.checks} <= set(Check)
    assert combined_score(0.5, 0.9) == pytest.approx(0.9)  # an even guard adds no evidence
    assert combined_score(0.9, 0.9) == pytest.approx(81 / 82)  # odds 9 x 9
    assert combined_score(0.2, 0.7, "verifier") == 0.7
    assert cal.score(0.9, 0.9) == combined_score(0.9, 0.9, cal.combine)
    # Monotone in both inputs, and bounded.
    assert cal.score(0.6, 0.8) <= cal.score(0.7, 0.8) <= cal.score(0.7, 0.9) < 1.0


async def test_the_calibrated_cascade_on_the_hand_written_probes(verifier: Verifier) -> None:
    """The whole shipped decision: at most 1 of 48 near misses served, >= 60% paraphrases."""
    cal = Calibration.for_model()
    guard = Guard.for_embedder(DEFAULT_MODEL)
    assert guard is not None
    rows = [json.loads(line) for line in PROBES.read_text().splitlines() if line.strip()]
    queries = [normalize_prompt(r["question2"]) for r in rows]
    cached = [normalize_prompt(r["question1"]) for r in rows]
    embedder = await LocalEmbedder.load()
    try:
        q, c = await embedder.embed_many(queries), await embedder.embed_many(cached)
    finally:
        await embedder.aclose()
    served = []
    for i in range(len(rows)):
        cosine = float(q[i] @ c[i])
        g = guard.probability(queries[i], cached[i], cosine)
        if cal.screen(queries[i], cached[i], cosine, g) is None:
            p = await verifier.probability(queries[i], cached[i])
            if cal.score(g, p) >= cal.threshold:
                served.append(rows[i]["label"])
    assert served.count(0) <= 1
    assert served.count(1) >= 0.6 * sum(r["label"] for r in rows)
