"""`python -m app.eval` on committed samples of the dev data (tests/data/README.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from itertools import product
from pathlib import Path

import numpy as np
import pytest

from app.providers.embedders.local import DEFAULT_MODEL, LocalEmbedder
from app.service.guard import Guard
from app.service.prompt import normalize_prompt
from app.service.verifier import Calibration

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PAIRS = ROOT / "tests" / "data" / "pairs_sample.jsonl"
STREAM = ROOT / "tests" / "data" / "workload_comqa_sample.jsonl"
PROBES = ROOT / "tests" / "data" / "near_miss_probes.jsonl"
PAWS = ROOT / "tests" / "data" / "paws_sample.jsonl"


def run_eval(*args: str) -> dict[str, object]:
    out = Path(args[args.index("--json") + 1])
    done = subprocess.run(
        [sys.executable, "-m", "app.eval", *args, "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "|" in done.stdout  # a table was printed
    result: dict[str, object] = json.loads(out.read_text())
    return result


def brute_auc(scores: list[float], labels: list[int]) -> float:
    pos = [s for s, y in zip(scores, labels, strict=True) if y == 1]
    neg = [s for s, y in zip(scores, labels, strict=True) if y == 0]
    won = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in product(pos, neg))
    return won / (len(pos) * len(neg))


async def test_pairs_mode_matches_an_independent_computation(tmp_path: Path) -> None:
    result = run_eval("pairs", str(PAIRS), "--no-guard", "--json", str(tmp_path / "pairs.json"))
    rows = [json.loads(line) for line in PAIRS.read_text().splitlines()]
    embedder = await LocalEmbedder.load()
    try:
        texts = [normalize_prompt(r[q]) for r in rows for q in ("question1", "question2")]
        vectors = [await embedder.embed(text) for text in texts]  # one by one, not embed_many
    finally:
        await embedder.aclose()
    scores = [float(np.dot(vectors[2 * i], vectors[2 * i + 1])) for i in range(len(rows))]
    labels = [r["label"] for r in rows]

    assert result["n"] == 48
    assert result["threshold"] == 0.9
    assert result["guard_threshold"] is None
    assert result["auc"] == pytest.approx(brute_auc(scores, labels), abs=1e-3)
    chosen = [s >= 0.9 for s in scores]
    true_pos = sum(c and y == 1 for c, y in zip(chosen, labels, strict=True))
    at_default = result["at_default"]
    assert isinstance(at_default, dict)
    assert at_default["recall"] == pytest.approx(true_pos / sum(labels), abs=1e-3)
    by_source = result["by_source"]
    assert isinstance(by_source, dict)
    assert set(by_source) == {"qqp", "mqp", "comqa"}
    assert all(report["n"] == 16 for report in by_source.values())
    assert set(result["recall_at_precision"]) == {"0.9", "0.95", "0.99"}  # type: ignore[arg-type]


async def test_pairs_mode_scores_with_the_guard_by_default(tmp_path: Path) -> None:
    off = ["--verifier", "off"]
    result = run_eval("pairs", str(PAIRS), *off, "--json", str(tmp_path / "pairs.json"))
    assert result["verifier_threshold"] is None
    guard = Guard.for_embedder(DEFAULT_MODEL)
    assert guard is not None
    rows = [json.loads(line) for line in PAIRS.read_text().splitlines()]
    embedder = await LocalEmbedder.load()
    try:
        scores = []
        for r in rows:
            a, b = normalize_prompt(r["question1"]), normalize_prompt(r["question2"])
            cosine = float(np.dot(await embedder.embed(a), await embedder.embed(b)))
            below_floor = cosine < guard.min_cosine
            scores.append(0.0 if below_floor else guard.probability(b, a, cosine))
    finally:
        await embedder.aclose()
    labels = [r["label"] for r in rows]
    assert result["threshold"] == guard.min_cosine
    assert result["guard_threshold"] == guard.threshold
    assert result["auc"] == pytest.approx(brute_auc(scores, labels), abs=1e-3)
    chosen = [s >= guard.threshold for s in scores]
    true_pos = sum(c and y == 1 for c, y in zip(chosen, labels, strict=True))
    at_default = result["at_default"]
    assert isinstance(at_default, dict)
    assert at_default["recall"] == pytest.approx(true_pos / sum(labels), abs=1e-3)


def test_plot_writes_a_png(tmp_path: Path) -> None:
    out = tmp_path / "pairs.png"
    run_eval("pairs", str(PAIRS), "--plot", str(out), "--json", str(tmp_path / "p.json"))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_workload_sweep_agrees_with_the_replay_at_the_default(tmp_path: Path) -> None:
    result = run_eval("workload", str(STREAM), "--sweep", "--json", str(tmp_path / "w.json"))
    sweep = result["sweep"]
    assert isinstance(sweep, list)
    assert len(sweep) >= 10
    at_default = [p for p in sweep if p["threshold"] == result["guard_threshold"]]
    assert len(at_default) == 1  # the default lies on the sweep's grid
    for field in ("served", "true_hits", "precision", "hit_recall", "answer_precision"):
        assert at_default[0][field] == result[field], field
    served = [p["served"] for p in sorted(sweep, key=lambda p: p["threshold"])]
    assert served == sorted(served, reverse=True)  # stricter never serves more


def test_workload_mode_scores_the_replay(tmp_path: Path) -> None:
    result = run_eval("workload", str(STREAM), "--json", str(tmp_path / "w.json"))
    assert result["n"] == 57
    assert result["expected_hits"] == 33
    served = result["served"]
    true_hits = result["true_hits"]
    assert isinstance(served, int)
    assert isinstance(true_hits, int)
    assert 0 < true_hits <= served
    assert (
        served
        == true_hits + result["confirmed_false_positives"] + result["inferred_false_positives"]
    )  # type: ignore[operator]
    assert result["precision"] == pytest.approx(true_hits / served, abs=1e-3)
    assert result["hit_recall"] == pytest.approx(true_hits / 33, abs=1e-3)
    assert result["answer_precision"] is not None


def test_workload_thresholds_bound_what_is_served(tmp_path: Path) -> None:
    everything = run_eval(
        "workload",
        str(STREAM),
        "--threshold",
        "0",
        "--no-guard",
        "--json",
        str(tmp_path / "all.json"),
    )
    assert everything["served"] == 56  # every query after the first finds something
    nothing = run_eval(
        "workload", str(STREAM), "--threshold", "1", "--json", str(tmp_path / "none.json")
    )
    assert nothing["served"] == 0  # the stream has no exact repeats
    assert nothing["hit_recall"] == 0


def test_workload_verify_estimates_the_true_wrong_hit_rate(tmp_path: Path) -> None:
    # A decision loose enough to serve wrong answers, every semantic hit verified: the live
    # count must equal the truth, and disputed pairs stop hitting.
    loose = ["--threshold", "0.3", "--no-guard"]
    result = run_eval(
        "workload", str(STREAM), *loose, "--verify", "1.0", "--json", str(tmp_path / "v.json")
    )
    verification = result["verification"]
    assert isinstance(verification, dict)
    assert verification["checked"] == verification["semantic_hits"] > 0
    assert verification["disagreed"] == verification["wrong_semantic_hits"] > 0
    assert verification["estimate"] == verification["true_rate"]
    assert verification["covered"] is True
    unverified = run_eval("workload", str(STREAM), *loose, "--json", str(tmp_path / "u.json"))
    assert unverified["verification"] is None
    # What verification learned (raised floors, vetoed pairs) never serves more wrong answers.
    served, precision = unverified["served"], unverified["answer_precision"]
    assert isinstance(served, int)
    assert isinstance(precision, float)
    assert verification["wrong_semantic_hits"] <= round(served * (1 - precision))
    half = run_eval(
        "workload", str(STREAM), *loose, "--verify", "0.5", "--json", str(tmp_path / "h.json")
    )
    sampled = half["verification"]
    assert isinstance(sampled, dict)
    assert 0 < sampled["checked"] < sampled["semantic_hits"]
    assert sampled["low"] <= sampled["estimate"] <= sampled["high"]


def test_pairs_mode_decides_like_the_service_checks_or_cascade(tmp_path: Path) -> None:
    calibration = Calibration.for_model()
    on = ["--verifier", "on"]
    cascade = run_eval("pairs", str(PAIRS), *on, "--json", str(tmp_path / "cascade.json"))
    assert cascade["verifier_threshold"] == calibration.threshold
    off = ["--verifier", "off"]
    guarded = run_eval("pairs", str(PAIRS), *off, "--json", str(tmp_path / "g.json"))
    checks = ["--verifier", "checks"]
    checked = run_eval("pairs", str(PAIRS), *checks, "--json", str(tmp_path / "c.json"))
    assert checked["verifier_threshold"] is None
    at_cascade, at_guard = cascade["at_default"], guarded["at_default"]
    at_checks = checked["at_default"]
    assert isinstance(at_cascade, dict)
    assert isinstance(at_guard, dict)
    assert isinstance(at_checks, dict)
    # Checks only veto what the guard serves; on this sample the cascade serves no more
    # negative pairs than the guard alone either.
    assert at_checks["negatives_served"] <= at_guard["negatives_served"]
    assert at_cascade["negatives_served"] <= at_guard["negatives_served"]
    budget = run_eval(
        "pairs", str(PAIRS), *on, "--max-wrong-hit-rate", "0", "--json", str(tmp_path / "b.json")
    )
    assert budget["verifier_threshold"] == calibration.threshold_for(0.0)


def test_pairs_mode_overlap_refuses_word_swaps_the_checks_serve(tmp_path: Path) -> None:
    # The default, VERIFIER=overlap, on 24 held-out PAWS pairs (16 different in meaning).
    calibration = Calibration.for_model()
    gated = run_eval("pairs", str(PAWS), "--json", str(tmp_path / "overlap.json"))
    checks = ["--verifier", "checks"]
    checked = run_eval("pairs", str(PAWS), *checks, "--json", str(tmp_path / "checks.json"))
    assert gated["overlap_gate"] == calibration.overlap_gate
    assert gated["gated_threshold"] == calibration.threshold
    assert gated["guard_threshold"] == checked["guard_threshold"]
    assert gated["verifier_threshold"] is None  # the guard's threshold decides
    at_gated, at_checks = gated["at_default"], checked["at_default"]
    assert isinstance(at_gated, dict)
    assert isinstance(at_checks, dict)
    assert at_checks["negatives_served"] >= 0.25
    assert at_gated["negatives_served"] <= at_checks["negatives_served"] / 2
    assert at_gated["recall"] <= at_checks["recall"]  # it only ever refuses more


def test_pairs_mode_maps_a_budget_onto_the_guard_and_the_verifier(tmp_path: Path) -> None:
    # VERIFIER=overlap: a strict budget raises the guard's threshold too (it decides the hits
    # the verifier does not read), as the service's Planner maps it. The probes file has
    # neither ids nor sources: a pairs file of one's own needs only questions and labels.
    calibration = Calibration.for_model()
    guard_at, verify_at = calibration.gated_thresholds(0.02)
    default = run_eval("pairs", str(PROBES), "--json", str(tmp_path / "default.json"))
    budget = ["--max-wrong-hit-rate", "0.02"]
    strict = run_eval("pairs", str(PROBES), *budget, "--json", str(tmp_path / "strict.json"))
    assert default["guard_threshold"] == calibration.guard_threshold
    assert strict["guard_threshold"] == guard_at > calibration.guard_threshold
    assert strict["gated_threshold"] == round(verify_at, 4)
    at_default, at_strict = default["at_default"], strict["at_default"]
    assert isinstance(at_default, dict)
    assert isinstance(at_strict, dict)
    assert at_strict["recall"] < at_default["recall"]  # paraphrases the default serves refused
    assert at_strict["negatives_served"] <= at_default["negatives_served"]


def probe_stream(path: Path) -> Path:
    """The hand-written probes as a stream: each first question once, then each second one
    (a paraphrase: its first question's cluster; a near miss: a cluster of its own, known not
    a duplicate of the first)."""
    probes = [json.loads(line) for line in PROBES.read_text().splitlines() if line.strip()]
    rows: list[dict[str, object]] = []
    first: dict[str, int] = {}  # question1 -> its position (paraphrase and near miss share it)
    for probe in probes:
        if probe["question1"] not in first:
            first[probe["question1"]] = t = len(rows)
            rows.append({"t": t, "query": probe["question1"], "cluster": f"c{t}"})
    for probe in probes:
        source, t = first[probe["question1"]], len(rows)
        same = probe["label"] == 1
        rows.append(
            {"t": t, "query": probe["question2"], "cluster": f"c{source if same else t}",
             "duplicate_of": [source] if same else [],
             "known_non_duplicate_of": [] if same else [source]}
        )  # fmt: skip
    for row in rows:
        row["source"] = "probe"
        row["expected"] = "hit" if row.get("duplicate_of") else "miss"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_workload_replays_decide_like_the_service_checks_or_cascade(tmp_path: Path) -> None:
    # The replay must run the decision VERIFIER names (it once ran the guard alone whatever
    # VERIFIER said), and its sweep must reproduce the replay at the decision's threshold.
    stream = str(probe_stream(tmp_path / "probes.jsonl"))
    runs = {
        mode: run_eval(
            "workload", stream, "--verifier", mode, "--sweep", "--json", str(tmp_path / mode)
        )
        for mode in ("off", "checks", "overlap", "on")
    }
    calibration = Calibration.for_model()
    assert runs["on"]["verifier_threshold"] == calibration.threshold
    assert runs["overlap"]["verifier_threshold"] == calibration.threshold
    assert runs["checks"]["verifier_threshold"] is None
    wrong = {mode: run["confirmed_false_positives"] for mode, run in runs.items()}
    # The guard alone serves some hand-written near misses (bench/quality.md: 9 of 48).
    assert isinstance(wrong["off"], int)
    assert wrong["off"] >= 3
    assert wrong["checks"] < wrong["off"]
    assert wrong["overlap"] <= wrong["checks"]
    assert wrong["on"] < wrong["off"]
    for mode, run in runs.items():
        # VERIFIER=overlap decides at the guard's threshold (gated scores are moved onto it).
        decided_at = run["verifier_threshold"] if mode == "on" else run["guard_threshold"]
        sweep = run["sweep"]
        assert isinstance(sweep, list)
        at = [p for p in sweep if p["threshold"] == decided_at]
        assert len(at) == 1, mode
        for field in ("served", "true_hits", "confirmed_false_positives", "precision"):
            assert at[0][field] == run[field], (mode, field)
    if runs["on"]["sweep"]:
        served = [p["served"] for p in sorted(runs["on"]["sweep"], key=lambda p: p["threshold"])]
        assert served == sorted(served, reverse=True)
    strict = run_eval(
        "workload", stream, "--verifier", "on", "--max-wrong-hit-rate", "0",
        "--json", str(tmp_path / "strict"),
    )  # fmt: skip
    assert strict["verifier_threshold"] == calibration.threshold_for(0.0)
    assert strict["served"] <= runs["on"]["served"]


def test_workload_scores_the_held_out_clusters_apart(tmp_path: Path) -> None:
    stream = str(probe_stream(tmp_path / "probes.jsonl"))
    pairs_file = tmp_path / "pairs.jsonl"
    probes = [json.loads(line) for line in PROBES.read_text().splitlines() if line.strip()]
    pairs_file.write_text("".join(json.dumps({**p, "source": "probe"}) + "\n" for p in probes))
    result = run_eval(
        "workload", stream, "--sweep", "--held-out", str(pairs_file),
        "--json", str(tmp_path / "h.json"),
    )  # fmt: skip
    held = result["held_out"]
    assert isinstance(held, dict)
    assert held["pairs"] == "pairs.jsonl"
    assert 0 < held["n"] < result["n"]  # type: ignore[operator]
    assert 0 < held["expected_hits"] < result["expected_hits"]  # type: ignore[operator]
    assert held["served"] <= result["served"]  # type: ignore[operator]
    at_default = [p for p in held["sweep"] if p["threshold"] == result["guard_threshold"]]
    assert len(at_default) == 1
    for field in ("served", "true_hits", "precision", "hit_recall"):
        assert at_default[0][field] == held[field], field
