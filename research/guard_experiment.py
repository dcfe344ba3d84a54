"""Experiment for issue 3: a learned verifier over pair features against the plain cosine.

    python -m research.guard_experiment [PAIRS_FILE]

Splits the dev pairs by question (pairs that share any text stay on one side), fits a logistic
regression on 70% of the groups and reports both scorers on the other 30% with the eval's own
metrics. Nothing here is wired into the service; it decided whether the approach was worth it
(the shipped guard is fit by training/guard_fit.py, which holds the fit and table helpers used
here). Writes research/guard_experiment.md.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt

from app.eval.pairs import load_pairs
from app.eval.split import SEED, split_by_group
from app.service.guard import features, idf_table
from app.service.prompt import normalize_prompt
from training.guard_fit import SECTION_HEAD, embed_cached, fit_logistic, section, weights_table

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PAIRS = ROOT.parent / "shared" / "data" / "dev" / "pairs.jsonl"
OUT = ROOT / "research" / "guard_experiment.md"


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
        f"`python -m research.guard_experiment {path.name}`; split by question group "
        f"(seed {SEED}): {int((~held).sum())} training pairs, {int(held.sum())} held-out pairs. "
        "IDF from the training questions only. Figures below are on the held-out pairs.",
        "",
        *SECTION_HEAD,
        *section("cosine", test, cosine[held]),
        *section("verifier", test, verifier),
        *(
            row
            for l2, scores in heads.items()
            for row in section(f"verifier+emb l2={l2:g}", test, scores)
        ),
        "",
        *weights_table(w),
    ]
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_PAIRS))
