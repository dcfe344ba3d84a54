"""Does the ft2 embedder's held-out gain come from stream pairs that paraphrase held-out texts?

ft2 (training/finetune/results.md, "ft2") trained on pairs from the dev query streams; stream
clusters holding a validation or held-out text of pairs.jsonl were dropped, but a stream text can
still be a close paraphrase of a held-out text without being it. This splits the held-out pairs by
how close either of their texts comes (cosine under the *base* MiniLM, which trained on neither)
to any text of those stream pairs, and compares two `training/verifier/evaluate.py scores` files
(held-out pairs: cosine and guard per pair) on each side.

    .venv/bin/python -m research.stream_overlap BEFORE/scores-pairs-held.json \
        AFTER/scores-pairs-held.json            # writes research/stream_overlap.md
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import numpy as np

from app.eval.scoring import roc_auc
from app.providers.embedders.local import BASE_MODEL, LocalEmbedder
from app.service.prompt import normalize_prompt
from training.verifier.data import pairs_parts, workload_pairs

CUTS = (0.8, 0.9, 0.95)
OUT = Path(__file__).with_suffix(".md")


async def nearest_stream_cosine(held_texts: list[str], stream_texts: list[str]) -> np.ndarray:
    """For each held-out text, its highest base-model cosine to any stream training text."""
    embedder = await LocalEmbedder.load(model=BASE_MODEL)
    try:
        stream = await embedder.embed_many(stream_texts)
        held = await embedder.embed_many(held_texts)
    finally:
        await embedder.aclose()
    return np.asarray((held @ stream.T).max(axis=1))


def main(before_path: str, after_path: str) -> str:
    parts = pairs_parts()
    held = parts.select("held")
    stream = workload_pairs(parts)
    stream_texts = sorted({normalize_prompt(t) for r in stream for t in (r.question1, r.question2)})
    held_texts = sorted({normalize_prompt(t) for r in held for t in (r.question1, r.question2)})
    nearest = dict(
        zip(held_texts, asyncio.run(nearest_stream_cosine(held_texts, stream_texts)), strict=True)
    )
    closeness = np.array(
        [
            max(nearest[normalize_prompt(r.question1)], nearest[normalize_prompt(r.question2)])
            for r in held
        ]
    )
    labels = np.array([r.label for r in held])
    before, after = (json.loads(Path(p).read_text()) for p in (before_path, after_path))
    lines = [
        "# Held-out pairs by closeness to the stream training pairs (research/stream_overlap.py)",
        "",
        f"{len(held)} held-out pairs of pairs.jsonl; {len(stream)} stream training pairs "
        f'({len(stream_texts)} texts). "Near": either text of the pair has a stream text at '
        "base-MiniLM cosine >= the cut. AUC before -> after.",
        "",
        "| cut | far pairs | near pairs | cosine AUC, far | cosine AUC, near | guard AUC, far "
        "| guard AUC, near |",
        "|---|---|---|---|---|---|---|",
    ]
    for cut in CUTS:
        far = closeness < cut
        cells = []
        for score in ("cosine", "guard"):
            b, a = np.array(before[score]), np.array(after[score])
            for side in (far, ~far):
                cells.append(
                    f"{roc_auc(b[side], labels[side]):.3f} -> {roc_auc(a[side], labels[side]):.3f}"
                )
        lines.append(
            f"| {cut} | {far.sum()} | {(~far).sum()} | {cells[0]} | {cells[1]} | {cells[2]} "
            f"| {cells[3]} |"
        )
    text = "\n".join(lines) + "\n"
    OUT.write_text(text)
    return text


if __name__ == "__main__":
    print(main(sys.argv[1], sys.argv[2]))
