"""VERIFIER=overlap: the guard and the checks decide, and the verifier reads only what they
would serve whose words nearly all recur in the question (word-swap pairs, where only word
order tells the meaning apart). Real models throughout: the shipped embedder, guard, verifier
and calibration, on tests/data/paws_sample.jsonl (24 held-out PAWS-Wiki pairs)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from app.providers.embedders.local import DEFAULT_MODEL, LocalEmbedder
from app.service.guard import Guard
from app.service.judge import Judge, Verdict
from app.service.near_miss import overlap
from app.service.prompt import normalize_prompt
from app.service.verifier import Calibration, Verifier

PAWS = Path(__file__).parents[1] / "data" / "paws_sample.jsonl"


@pytest.fixture(scope="module")
async def models() -> AsyncIterator[tuple[LocalEmbedder, Guard, Verifier]]:
    embedder = await LocalEmbedder.load()
    verifier = await Verifier.load()
    guard = Guard.for_embedder(DEFAULT_MODEL)
    assert guard is not None
    yield embedder, guard, verifier
    await verifier.aclose()
    await embedder.aclose()


async def verdicts(
    judge: Judge, embedder: LocalEmbedder, pairs: list[tuple[str, str]], threshold: float
) -> list[Verdict]:
    texts = [t for pair in pairs for t in pair]
    vectors = await embedder.embed_many(texts)
    out = []
    for i, (query, cached) in enumerate(pairs):
        cosine = float(np.dot(vectors[2 * i], vectors[2 * i + 1]))
        out.append(await judge(query, cached, cosine, threshold))
    return out


async def test_the_verifier_reads_only_high_overlap_hits_and_refuses_word_swaps(
    models: tuple[LocalEmbedder, Guard, Verifier],
) -> None:
    embedder, guard, verifier = models
    calibration = Calibration.for_model()
    assert 0.0 < calibration.overlap_gate < 1.0
    rows = [json.loads(line) for line in PAWS.read_text().splitlines()]
    pairs = [(normalize_prompt(r["question2"]), normalize_prompt(r["question1"])) for r in rows]
    labels = [r["label"] for r in rows]
    checks = Judge(guard, checks=True)
    gated = Judge(guard, verifier, calibration, checks=True, gated=True)
    assert (checks.mode, gated.mode) == ("checks", "overlap")
    before = await verdicts(checks, embedder, pairs, calibration.threshold)
    after = await verdicts(gated, embedder, pairs, calibration.threshold)
    wrong_before = sum(v.serve and y == 0 for v, y in zip(before, labels, strict=True))
    wrong_after = sum(v.serve and y == 0 for v, y in zip(after, labels, strict=True))
    # The guard reads bags of words: it serves many of these different-meaning word swaps.
    assert wrong_before >= 4
    assert wrong_after <= wrong_before // 2
    for (query, cached), b, a in zip(pairs, before, after, strict=True):
        if not b.serve:  # the gated judge never serves what the guard and checks refuse
            assert not a.serve
            assert a.verifier_score is None
        elif overlap(query, cached) >= calibration.overlap_gate:
            assert a.verifier_score is not None  # read by the verifier, decided by it
            assert a.serve == (a.verifier_score >= calibration.threshold)
            assert a.refused_by in (None, "verifier")
        else:
            assert a.serve
            assert a.verifier_score is None


async def test_a_low_overlap_paraphrase_is_served_without_the_verifier(
    models: tuple[LocalEmbedder, Guard, Verifier],
) -> None:
    embedder, guard, verifier = models
    calibration = Calibration.for_model()
    pair = ("what are good ways to learn to cook at home?", "how can i teach myself cooking?")
    assert overlap(*pair) < calibration.overlap_gate
    gated = Judge(guard, verifier, calibration, checks=True, gated=True)
    plain = Judge(guard, checks=True)
    (with_gate,) = await verdicts(gated, embedder, [pair], calibration.threshold)
    (without,) = await verdicts(plain, embedder, [pair], calibration.threshold)
    assert with_gate == without  # the same verdict and scores: the verifier did not run
    assert with_gate.verifier_score is None


def test_overlap_mode_needs_the_checks(models: tuple[LocalEmbedder, Guard, Verifier]) -> None:
    _, guard, verifier = models
    with pytest.raises(ValueError, match="near-miss checks"):
        Judge(guard, verifier, Calibration.for_model(), gated=True)


def test_gated_score_reaches_the_guard_threshold_exactly_when_both_decisions_do() -> None:
    t_guard, t_verify = 0.8, 0.976
    for guard_p in (0.5, 0.79, 0.8, 0.9, 0.99):
        for combined in (0.5, 0.97, 0.976, 0.98, 0.999):
            score = Calibration.gated_score(guard_p, combined, t_guard, t_verify)
            assert (score >= t_guard - 1e-12) == (
                guard_p >= t_guard and combined >= t_verify - 1e-12
            )
            assert score <= guard_p
