"""The verifier's data and splits, shared by train.py (torch venv) and evaluate.py (service venv).

Only numpy, msgspec and app.eval here, so both venvs import it.

- pairs.jsonl (QQP, MQP, ComQA): split by question group with app.eval.split (seed 20261126,
  30% of groups held out for the tables only), then the training side again by group (seed 7,
  15%) into train / validation: the same three parts as training/finetune and guard_fit.
- pairs_paws.jsonl has no groups: its pairs are split by sentence-connected component (the same
  union-find on the two texts, split_by_group), 30% held out with PAWS_SEED, and the training
  side again (seed 7, 15%) into train / validation.

Held-out rows are read only by evaluate.py for the tables; thresholds, the calibration curve and
the near-miss checks are chosen on the validation parts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np
import numpy.typing as npt

from app.eval.split import SEED, split_by_group

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "dev"
PAIRS = DATA / "pairs.jsonl"
PAWS = DATA / "pairs_paws.jsonl"
OUT = ROOT / "var" / "verifier"

VAL_SEED = 7
VAL_FRACTION = 0.15
PAWS_SEED = 20261127


class Row(msgspec.Struct, frozen=True, kw_only=True):
    """One labeled pair as both data files spell it (extra fields ignored)."""

    id: str
    source: str = ""
    question1: str
    question2: str
    label: int


@dataclass(frozen=True)
class Part:
    """Rows with their part: 'train', 'val' or 'held'."""

    rows: list[Row]
    part: npt.NDArray[np.str_]

    def select(self, name: str) -> list[Row]:
        """Rows of one part."""
        return [r for r, p in zip(self.rows, self.part, strict=True) if p == name]


def load(path: Path) -> list[Row]:
    """Read a pairs JSONL file."""
    decoder = msgspec.json.Decoder(Row)
    return [decoder.decode(line) for line in path.read_bytes().splitlines() if line.strip()]


def _three_way(rows: list[Row], seed: int) -> npt.NDArray[np.str_]:
    held = split_by_group([(r.question1, r.question2) for r in rows], seed)
    side = [r for r, h in zip(rows, held, strict=True) if not h]
    val_sub = split_by_group([(r.question1, r.question2) for r in side], VAL_SEED, VAL_FRACTION)
    part = np.where(held, "held", "train").astype("<U5")
    part[np.flatnonzero(~held)[val_sub]] = "val"
    return part


def pairs_parts(path: Path = PAIRS) -> Part:
    """pairs.jsonl in train / val / held parts (the split every quality table uses)."""
    rows = load(path)
    return Part(rows, _three_way(rows, SEED))


def paws_parts(path: Path = PAWS) -> Part:
    """pairs_paws.jsonl in train / val / held parts, by sentence-connected component."""
    rows = load(path)
    return Part(rows, _three_way(rows, PAWS_SEED))


def workload_pairs(parts: Part) -> list[Row]:
    """Extra training pairs from the dev query streams, kept away from validation and held-out.

    Each stream query gives one positive (with its first earlier duplicate) and one negative
    per known near miss; pairs already in pairs.jsonl are skipped. A whole stream cluster is
    dropped when any of its texts is a validation or held-out text of pairs.jsonl, so no
    paraphrase of such a text is trained on.
    """
    kept_out = {
        t.lower()
        for r, p in zip(parts.rows, parts.part, strict=True)
        if p != "train"
        for t in (r.question1, r.question2)
    }
    known = {frozenset((r.question1.lower(), r.question2.lower())) for r in parts.rows}
    out = []
    for source in ("qqp", "mqp", "comqa"):
        rows = [
            msgspec.json.decode(line)
            for line in (DATA / f"workload_{source}.jsonl").read_bytes().splitlines()
            if line.strip()
        ]
        banned = {r["cluster"] for r in rows if r["query"].lower() in kept_out}
        ok = {r["t"]: r for r in rows if r["cluster"] not in banned}
        for r in ok.values():
            first = [s for s in r["duplicate_of"] if s in ok][:1]
            links = [(s, 1) for s in first] + [
                (s, 0) for s in r["known_non_duplicate_of"] if s in ok
            ]
            for s, label in links:
                if frozenset((ok[s]["query"].lower(), r["query"].lower())) in known:
                    continue  # already a pairs.jsonl pair
                out.append(
                    Row(
                        id=f"{source}-stream-{s}-{r['t']}",
                        source=source,
                        question1=ok[s]["query"],
                        question2=r["query"],
                        label=label,
                    )
                )
    return out
