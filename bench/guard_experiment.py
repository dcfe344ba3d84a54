"""Experiment for issue 3: a learned verifier over pair features against the plain cosine.

    python -m bench.guard_experiment [PAIRS_FILE]

Splits the dev pairs by question (pairs that share any text stay on one side), fits a logistic
regression on 70% of the groups and reports both scorers on the other 30% with the eval's own
metrics. Nothing here is wired into the service; it decides whether the approach is worth it.
Writes bench/guard_experiment.md.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from app.eval.pairs import Pair, load_pairs, report
from app.eval.split import SEED, split_by_group
from app.providers.embedders.local import BASE_MODEL, LocalEmbedder
from app.service.guard import FEATURES, features, idf_table
from app.service.prompt import normalize_prompt

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PAIRS = ROOT.parent / "shared" / "data" / "dev" / "pairs.jsonl"
OUT = ROOT / "bench" / "guard_experiment.md"


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


async def main(path: Path) -> None:
    """Fit on the training groups, compare on the held-out groups, write the table."""
    pairs = load_pairs(path)
    texts = sorted({normalize_prompt(q) for p in pairs for q in (p.question1, p.question2)})
    vectors = await embed_cached(texts, path.stem)
    row = {text: i for i, text in enumerate(texts)}
    u = vectors[[row[normalize_prompt(p.question1)] for p in pairs]].astype(np.float64)
    v = vectors[[row[normalize_prompt(p.question2)] for p in pairs]].astype(np.float64)
    cosine = np.einsum("ij,ij->i", u, v)
    held = split_by_group([(p.question1, p.question2) for p in pairs], SEED)
    train_texts = [
        q for p, h in zip(pairs, held, strict=True) if not h for q in (p.question1, p.question2)
    ]
    idf = idf_table(train_texts)
    unseen = max(idf.values())
    hand = np.array(
        [
            features(p.question1, p.question2, float(c), idf, unseen)
            for p, c in zip(pairs, cosine, strict=True)
        ]
    )
    y = np.array([p.label for p in pairs], dtype=np.float64)
    test = [p for p, h in zip(pairs, held, strict=True) if h]

    def fitted(
        x: npt.NDArray[np.float64], l2: float
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        mean, std = x[~held].mean(axis=0), x[~held].std(axis=0) + 1e-9
        w = fit_logistic((x[~held] - mean) / std, y[~held], l2=l2)
        z = np.hstack([(x[held] - mean) / std, np.ones((int(held.sum()), 1))]) @ w
        return 1 / (1 + np.exp(-z)), w

    verifier, w = fitted(hand, 1.0)
    # Symmetric interactions of the two embeddings (|u-v|, u*v): a siamese classifier head.
    both = np.hstack([hand, np.abs(u - v), u * v])
    heads = {l2: fitted(both, l2)[0] for l2 in (10.0, 100.0, 1000.0)}
    lines = [
        "# Guard experiment: plain cosine vs a logistic verifier over pair features",
        "",
        f"`python -m bench.guard_experiment {path.name}`; split by question group (seed {SEED}): "
        f"{int((~held).sum())} training pairs, {int(held.sum())} held-out pairs. IDF from the "
        "training questions only. Figures below are on the held-out pairs.",
        "",
        "| scorer | set | n | AUC | R@P0.90 | R@P0.95 | R@P0.99 |",
        "|---|---|---|---|---|---|---|",
        *section("cosine", test, cosine[held]),
        *section("verifier", test, verifier),
        *(
            row
            for l2, scores in heads.items()
            for row in section(f"verifier+emb l2={l2:g}", test, scores)
        ),
        "",
        "Weights on standardized features (bias last):",
        "",
        "| " + " | ".join(FEATURES) + " | bias |",
        "|" + "---|" * (len(FEATURES) + 1),
        "| " + " | ".join(f"{v:+.2f}" for v in w) + " |",
    ]
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_PAIRS))
