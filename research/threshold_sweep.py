"""Sweep the cosine threshold on labelled question pairs with the local embedder.

Usage: .venv/bin/python research/threshold_sweep.py [PAIRS_JSONL]
(default ../shared/data/dev/pairs.jsonl from the repository root). Prints precision,
recall and F1 of "duplicate" for thresholds 0.70..0.98, overall and per source, and
writes the same table to research/threshold_sweep.md.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a plain script, not only as `python -m research...`
    sys.path.insert(0, str(ROOT))

from app.providers.embedders.local import BASE_MODEL, LocalEmbedder  # noqa: E402

DEFAULT_PAIRS = ROOT / ".." / "shared" / "data" / "dev" / "pairs.jsonl"
OUTPUT = Path(__file__).with_suffix(".md")
THRESHOLDS = [round(0.70 + 0.01 * i, 2) for i in range(29)]  # 0.70 .. 0.98
TARGET_PRECISIONS = (0.80, 0.85)


@dataclass(frozen=True)
class Scores:
    """Precision, recall and F1 of predicting "duplicate" when cosine >= threshold."""

    precision: float
    recall: float
    f1: float


def score(cosines: npt.NDArray[np.float64], labels: npt.NDArray[np.bool_], t: float) -> Scores:
    """Scores at one threshold (precision is 1.0 by convention when nothing is predicted)."""
    predicted = cosines >= t
    true_pos = int(np.sum(predicted & labels))
    precision = true_pos / int(predicted.sum()) if predicted.any() else 1.0
    recall = true_pos / int(labels.sum()) if labels.any() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Scores(precision, recall, f1)


def lowest_threshold_for(
    cosines: npt.NDArray[np.float64], labels: npt.NDArray[np.bool_], target: float
) -> tuple[float, Scores] | None:
    """The lowest threshold (0.001 steps) whose precision reaches `target`, or None."""
    for t in np.arange(0.500, 1.0005, 0.001):
        scores = score(cosines, labels, float(t))
        if scores.precision >= target and scores.recall > 0:
            return round(float(t), 3), scores
    return None


async def embed_pairs(
    rows: Sequence[dict[str, object]],
) -> tuple[npt.NDArray[np.float64], float, int]:
    """Cosine of every pair, the embedding wall time and the number of distinct texts."""
    texts = sorted({str(row[key]) for row in rows for key in ("question1", "question2")})
    # The study measured the base model; the service's default has since become the tuned one.
    embedder = await LocalEmbedder.load(model=BASE_MODEL)
    try:
        started = time.perf_counter()
        vectors = await embedder.embed_many(texts)
        elapsed = time.perf_counter() - started
    finally:
        await embedder.aclose()
    position = {text: i for i, text in enumerate(texts)}
    left = vectors[[position[str(row["question1"])] for row in rows]]
    right = vectors[[position[str(row["question2"])] for row in rows]]
    # Rows are unit length, so the dot product is the cosine.
    cosines = np.einsum("ij,ij->i", left, right).astype(np.float64)
    return cosines, elapsed, len(texts)


def render(
    path: Path,
    rows: Sequence[dict[str, object]],
    cosines: npt.NDArray[np.float64],
    elapsed: float,
    distinct: int,
) -> str:
    """The Markdown report: setup, table, and thresholds reaching the target precisions."""
    labels = np.array([int(str(row["label"])) == 1 for row in rows])
    sources = np.array([str(row["source"]) for row in rows])
    names = sorted(set(sources.tolist()))
    groups = {"all": np.ones(len(rows), dtype=bool)} | {name: sources == name for name in names}

    lines = [
        "# Cosine threshold sweep (local embedder, minilm-l6-v2-int8)",
        "",
        f"Data: `{path.name}`, {len(rows)} pairs "
        f"({int(labels.sum())} duplicate, {int((~labels).sum())} not), {distinct} distinct "
        f"questions embedded in {elapsed:.1f} s ({distinct / elapsed:.0f} texts/s).",
        "A pair is predicted duplicate when cosine >= t. P = precision, R = recall.",
        "",
        "| t | " + " | ".join(f"{g} P | {g} R | {g} F1" for g in groups) + " |",
        "|---|" + "---|---|---|" * len(groups),
    ]
    best: tuple[float, float] = (0.0, 0.0)
    for t in THRESHOLDS:
        cells = []
        for name, mask in groups.items():
            s = score(cosines[mask], labels[mask], t)
            cells += [f"{s.precision:.3f}", f"{s.recall:.3f}", f"{s.f1:.3f}"]
            if name == "all" and s.f1 > best[1]:
                best = (t, s.f1)
        lines.append(f"| {t:.2f} | " + " | ".join(cells) + " |")

    lines += ["", f"Best overall F1 in the table: {best[1]:.3f} at t = {best[0]:.2f}.", ""]
    for target in TARGET_PRECISIONS:
        found = lowest_threshold_for(cosines, labels, target)
        if found is None:
            lines.append(f"- Overall precision {target:.2f}: not reached.")
            continue
        t, s = found
        per_source = ", ".join(
            f"{name} P {score(cosines[groups[name]], labels[groups[name]], t).precision:.3f} "
            f"R {score(cosines[groups[name]], labels[groups[name]], t).recall:.3f}"
            for name in names
        )
        lines.append(
            f"- Overall precision {target:.2f} first reached at t = {t:.3f}: "
            f"P {s.precision:.3f}, R {s.recall:.3f}, F1 {s.f1:.3f} ({per_source})."
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str]) -> int:
    """Embed, sweep, print and write research/threshold_sweep.md."""
    path = Path(argv[0]) if argv else DEFAULT_PAIRS
    with path.open(encoding="utf-8") as handle:
        rows: list[dict[str, object]] = [json.loads(line) for line in handle if line.strip()]
    cosines, elapsed, distinct = asyncio.run(embed_pairs(rows))
    report = render(path.resolve(), rows, cosines, elapsed, distinct)
    print(report)
    OUTPUT.write_text(report, encoding="utf-8")
    print(f"written to {OUTPUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
