"""Fit the service's hit guard and write app/service/data/guard-<embedder>.json.

    python -m training.guard_fit [PAIRS_FILE]

Data: the dev pairs (../shared/data/dev/pairs.jsonl: QQP, MQP and ComQA; provenance in its
README). Split by question group (app/eval/split.py, seed 20261126): 30% held out for the
tables only. The tuned embedder (training/finetune/) was trained on 85% of the remaining groups,
so its cosines there are optimistic; the guard is fit on the other 15% (the validation groups
the embedder never trained on), IDF from all training-side questions. Prints and writes
training/guard_fit.md: held-out figures for the cosine alone and for the guard.

The embedding cache, the logistic fit and the table rows below are also what the finished
studies in research/ (guard_experiment, guard_streams) import.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import msgspec
import numpy as np
import numpy.typing as npt

from app.eval.pairs import Pair, load_pairs, report
from app.eval.split import SEED, split_by_group
from app.providers.embedders.local import BASE_MODEL, TUNED_MODEL, LocalEmbedder
from app.service.guard import DATA_DIR, FEATURES, Guard, GuardModel, features, idf_table
from app.service.prompt import normalize_prompt

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PAIRS = ROOT.parent / "shared" / "data" / "dev" / "pairs.jsonl"
OUT = ROOT / "training" / "guard_fit.md"
# The validation split of training/finetune/train.py: training-side groups it did not train on.
VAL_SEED = 7
VAL_FRACTION = 0.15
L2 = 1.0
# Decision defaults, chosen on the dev query streams (bench/quality.md, "Dev query streams").
MIN_COSINE = 0.70
THRESHOLD = 0.80


async def embed_cached(
    texts: list[str], name: str, model: str = BASE_MODEL
) -> npt.NDArray[np.float32]:
    """Embed with a local model (the base one unless told); cached under var/eval/ between runs."""
    suffix = "" if model == BASE_MODEL else f"-{model}"
    cache = ROOT / "var" / "eval" / f"vectors-{name}{suffix}.npy"
    if cache.exists():
        cached: npt.NDArray[np.float32] = np.load(cache)
        if len(cached) == len(texts):
            return cached
    embedder = await LocalEmbedder.load(model=model)
    try:
        vectors = await embedder.embed_many(texts)
    finally:
        await embedder.aclose()
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, vectors)
    return vectors


def fit_logistic(
    x: npt.NDArray[np.float64], y: npt.NDArray[np.float64], l2: float = 1.0
) -> npt.NDArray[np.float64]:
    """L2-regularised logistic regression by Newton's method; weights with bias last."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros(xb.shape[1])
    for _ in range(50):
        p = 1 / (1 + np.exp(-(xb @ w)))
        gradient = xb.T @ (p - y) + l2 * np.r_[w[:-1], 0.0]
        hessian = (xb.T * (p * (1 - p))) @ xb + l2 * np.diag(np.r_[np.ones(len(w) - 1), 0.0])
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


# The head of the table section() writes rows of.
SECTION_HEAD = [
    "| scorer | set | n | AUC | R@P0.90 | R@P0.95 | R@P0.99 |",
    "|---|---|---|---|---|---|---|",
]


def section(name: str, pairs: Sequence[Pair], scores: npt.NDArray[np.float64]) -> list[str]:
    """Rows for one scorer: per source and overall, on the held-out pairs."""
    rows = []
    labels = [p.label for p in pairs]
    sets = [(s, [i for i, p in enumerate(pairs) if p.source == s]) for s in ("qqp", "mqp", "comqa")]
    sets.append(("mqp+comqa", [i for i, p in enumerate(pairs) if p.source != "qqp"]))
    sets.append(("overall", list(range(len(pairs)))))
    for label, index in sets:
        r = report(scores[index], [labels[i] for i in index], threshold=0.5)
        at = r.recall_at_precision
        rows.append(
            f"| {name} | {label} | {r.n} | {r.auc:.3f} | {at['0.9']:.3f} | {at['0.95']:.3f} | "
            f"{at['0.99']:.3f} |"
        )
    return rows


def weights_table(weights: npt.NDArray[np.float64]) -> list[str]:
    """A fit's weights on the standardized FEATURES, bias last: a titled table."""
    return [
        "Weights on standardized features (bias last):",
        "",
        "| " + " | ".join(FEATURES) + " | bias |",
        "|" + "---|" * (len(FEATURES) + 1),
        "| " + " | ".join(f"{v:+.2f}" for v in weights) + " |",
    ]


def masks(pairs: list[Pair]) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """(held-out, validation) masks over the pairs."""
    held = split_by_group([(p.question1, p.question2) for p in pairs], SEED)
    train_side = [p for p, h in zip(pairs, held, strict=True) if not h]
    val_sub = split_by_group(
        [(p.question1, p.question2) for p in train_side], VAL_SEED, VAL_FRACTION
    )
    val = np.zeros(len(pairs), dtype=bool)
    val[np.flatnonzero(~held)[val_sub]] = True
    return held, val


async def main(path: Path) -> None:
    """Fit on the validation groups, report on the held-out groups, write the guard."""
    pairs = load_pairs(path)
    first = [normalize_prompt(p.question1) for p in pairs]
    second = [normalize_prompt(p.question2) for p in pairs]
    texts = sorted(set(first) | set(second))
    row = {text: i for i, text in enumerate(texts)}
    vectors = (await embed_cached(texts, path.stem, model=TUNED_MODEL)).astype(np.float64)
    cosine = np.einsum(
        "ij,ij->i", vectors[[row[t] for t in first]], vectors[[row[t] for t in second]]
    )
    held, val = masks(pairs)
    idf = idf_table([t for i in np.flatnonzero(~held) for t in (first[i], second[i])])
    unseen = max(idf.values())
    x = np.array(
        [
            features(a, b, float(c), idf, unseen)
            for a, b, c in zip(first, second, cosine, strict=True)
        ]
    )
    y = np.array([p.label for p in pairs], dtype=np.float64)
    mean, std = x[val].mean(axis=0), x[val].std(axis=0) + 1e-9
    weights = fit_logistic((x[val] - mean) / std, y[val], l2=L2)
    probability = 1 / (1 + np.exp(-(np.hstack([(x - mean) / std, np.ones((len(x), 1))]) @ weights)))

    model = GuardModel(
        embedder=TUNED_MODEL,
        features=list(FEATURES),
        mean=[round(float(v), 6) for v in mean],
        std=[round(float(v), 6) for v in std],
        weights=[round(float(v), 6) for v in weights],
        idf={w: round(v, 4) for w, v in sorted(idf.items())},
        min_cosine=MIN_COSINE,
        threshold=THRESHOLD,
        provenance=(
            f"training/guard_fit.py on {path.name} (QQP, MQP, ComQA dev pairs; see "
            f"../shared/data/dev/README.md): fit on {int(val.sum())} validation-group pairs, "
            f"IDF over {int((~held).sum())} training-side pairs, split seed {SEED}"
        ),
    )
    target = DATA_DIR / f"guard-{TUNED_MODEL}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(msgspec.json.encode(model) + b"\n")

    test = [p for p, h in zip(pairs, held, strict=True) if h]
    # The held-out pairs as a file, so `python -m app.eval pairs` can score them end to end.
    held_file = ROOT / "var" / "eval" / "pairs-heldout.jsonl"
    held_file.write_bytes(b"".join(msgspec.json.encode(p) + b"\n" for p in test))
    cost_us = guard_cost_us(first, second, cosine)
    lines = [
        f"# The hit guard for {TUNED_MODEL}",
        "",
        f"`python -m training.guard_fit {path.name}`: fit on {int(val.sum())} validation-group "
        f"pairs (l2 {L2:g}), scored on {int(held.sum())} held-out pairs (split by question "
        f"group, seed {SEED}). Written to `app/service/data/{target.name}`.",
        "",
        *SECTION_HEAD,
        *section("tuned cosine", test, cosine[held]),
        *section("guard", test, probability[held]),
        "",
        f"Cost per KNN candidate (shipped guard, median over {len(first)} dev pairs, "
        f"{TIMING_ROUNDS} rounds): {cost_us:.1f} µs. It runs only on semantic candidates above "
        "the cosine floor (at most KNN_TOP_K per request), never on exact hits.",
        "",
        *weights_table(weights),
    ]
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


TIMING_ROUNDS = 5


def guard_cost_us(first: list[str], second: list[str], cosine: npt.NDArray[np.float64]) -> float:
    """Median time of one `Guard.probability` call, in microseconds, with the shipped guard."""
    guard = Guard.for_embedder(TUNED_MODEL)
    assert guard is not None
    rounds = []
    for _ in range(TIMING_ROUNDS):
        started = time.perf_counter()
        for a, b, c in zip(first, second, cosine, strict=True):
            guard.probability(a, b, float(c))
        rounds.append((time.perf_counter() - started) / len(first) * 1e6)
    return float(np.median(rounds))


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_PAIRS))
