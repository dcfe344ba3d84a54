"""The guard's and the near-miss checks' outputs, pinned on the tests/data samples.

Speed work on the judge (issue 15: caching tokens and features, vectorizing) must not change a
decision: every guard probability and every check that fires is compared with what the code
produced before that work (tests/data/judge_pins.json, written by
`python -m tests.unit.test_judge_pins` from the code of commit c8a2d67, with the guard shipped
for the int8 embedder loaded into it). Probabilities are
compared to 1e-12: before that work the guard summed IDF weights in set order, which string
hashing randomizes per process, so its last bit already differed from one process to the next.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest

from app.providers.embedders.local import DEFAULT_MODEL
from app.service.guard import Guard
from app.service.judge import Judge
from app.service.near_miss import near_misses, veto

DATA = Path(__file__).parents[1] / "data"
PINS = DATA / "judge_pins.json"


def sample_pairs() -> list[tuple[str, str, float]]:
    """(query, cached, cosine) over the samples: labeled pairs and probes both ways round,
    and every pair of the ComQA stream's queries; cosines spread over 0.70-1.00."""
    texts: list[tuple[str, str]] = []
    for name in ("pairs_sample.jsonl", "near_miss_probes.jsonl"):
        for line in (DATA / name).read_text().splitlines():
            row = json.loads(line)
            texts += [(row["question1"], row["question2"]), (row["question2"], row["question1"])]
    stream = [
        json.loads(line)["query"]
        for line in (DATA / "workload_comqa_sample.jsonl").read_text().splitlines()
    ]
    texts += list(itertools.combinations(stream, 2))
    return [(a, b, 0.70 + (i % 31) / 100) for i, (a, b) in enumerate(texts)]


def outputs(guard: Guard) -> list[list[object]]:
    """[repr of the guard's probability, the checks that fire] per sample pair."""
    return [
        [repr(guard.probability(a, b, cosine)), [c.value for c in near_misses(a, b)]]
        for a, b, cosine in sample_pairs()
    ]


@pytest.fixture(scope="module")
def guard() -> Guard:
    shipped = Guard.for_embedder(DEFAULT_MODEL)
    assert shipped is not None
    return shipped


def test_guard_probabilities_and_checks_are_unchanged(guard: Guard) -> None:
    pinned = json.loads(PINS.read_text())
    now = outputs(guard)
    assert len(now) == len(pinned) > 1500
    changed = [
        (i, p, n)
        for i, (p, n) in enumerate(zip(pinned, now, strict=True))
        if p[1] != n[1] or not math.isclose(float(p[0]), float(n[0]), rel_tol=1e-12, abs_tol=1e-15)
    ]
    assert changed == []
    # The same side of the threshold, exactly.
    decided = [float(p) >= guard.threshold for p, _ in pinned]
    assert decided == [float(p) >= guard.threshold for p, _ in now]
    # The pins are not trivial: both serve and refuse, and every check fires somewhere.
    probabilities = [float(p) for p, _ in pinned]
    assert min(probabilities) < guard.threshold < max(probabilities)
    assert {c for _, fired in pinned for c in fired} == {"number", "negation", "antonym", "swap"}


async def test_the_judges_verdicts_follow_the_pins(guard: Guard) -> None:
    judge = Judge(guard, checks=True)
    pinned = json.loads(PINS.read_text())
    served = 0
    for (a, b, cosine), (probability, fired) in zip(sample_pairs(), pinned, strict=True):
        verdict = await judge(a, b, cosine, None)
        assert verdict.guard_score == pytest.approx(float(probability), rel=1e-12, abs=1e-15)
        expected = float(probability) >= guard.threshold and not fired
        assert verdict.serve is expected
        if float(probability) >= guard.threshold and fired:
            assert verdict.refused_by == fired[0]
            assert veto(a, b) is not None
        served += verdict.serve
    assert 0 < served < len(pinned)


if __name__ == "__main__":
    shipped = Guard.for_embedder(DEFAULT_MODEL)
    assert shipped is not None
    PINS.write_text(json.dumps(outputs(shipped), separators=(",", ":")) + "\n")
