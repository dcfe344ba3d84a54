"""Experiment for issue 3: does the pair-feature verifier serve better hits on the query streams?

    python -m research.guard_streams

Fits the verifier of `research/guard_experiment.py` on the training groups of the dev pairs, then
replays each dev stream in memory (top-3 cosine neighbours among all earlier queries, exactly
what the service's KNN returns at recall 1) and compares two decisions at matched hit recall:
cosine >= t, and cosine >= floor plus verifier probability >= p. Writes research/guard_streams.md.
Numpy only, no Redis: it measures decisions, not the engine (`make eval` measures that).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import numpy as np
import numpy.typing as npt

from app.eval.pairs import Pair, load_pairs
from app.eval.split import SEED, split_by_group
from app.eval.stream import StreamQuery, load_stream
from app.service.guard import features, idf_table
from app.service.prompt import normalize_prompt
from training.guard_fit import embed_cached, fit_logistic

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "dev"
OUT = ROOT / "research" / "guard_streams.md"
TOP_K = 3
COSINE_FLOOR = 0.7


def replay(
    stream: list[StreamQuery],
    vectors: npt.NDArray[np.float32],
    accept: object,
) -> list[int]:
    """Serve the first of the top-k earlier neighbours that `accept(t, s, cos)` takes."""
    served = []
    for t in range(len(stream)):
        if t == 0:
            served.append(-1)
            continue
        sims = vectors[:t] @ vectors[t]
        order = np.argsort(-sims)[:TOP_K]
        choice = -1
        for s in order:
            if accept(t, int(s), float(sims[s])):  # type: ignore[operator]
                choice = int(s)
                break
        served.append(choice)
    return served


def score(stream: list[StreamQuery], served: list[int]) -> dict[str, float]:
    """Precision, hit recall and (ComQA) answer precision of what was served."""
    expected = sum(1 for q in stream if q.expected == "hit")
    hits = [(t, s) for t, s in enumerate(served) if s >= 0]
    true = sum(1 for t, s in hits if stream[s].cluster == stream[t].cluster)
    same_answer = sum(
        1
        for t, s in hits
        if stream[t].answer_key is not None and stream[s].answer_key == stream[t].answer_key
    )
    return {
        "served": len(hits),
        "precision": true / len(hits) if hits else 1.0,
        "hit_recall": true / expected if expected else 0.0,
        "answer_precision": same_answer / len(hits) if hits else 1.0,
    }


async def main() -> None:
    """Fit on dev pair training groups, replay the three streams, write the comparison."""
    pairs: list[Pair] = load_pairs(DATA / "pairs.jsonl")
    held = split_by_group([(p.question1, p.question2) for p in pairs], SEED)
    train = [p for p, h in zip(pairs, held, strict=True) if not h]
    idf = idf_table([q for p in train for q in (p.question1, p.question2)])
    unseen = max(idf.values())
    texts = sorted({normalize_prompt(q) for p in train for q in (p.question1, p.question2)})
    vectors = await embed_cached(texts, "train-texts")
    row = {text: i for i, text in enumerate(texts)}
    u = vectors[[row[normalize_prompt(p.question1)] for p in train]]
    v = vectors[[row[normalize_prompt(p.question2)] for p in train]]
    cosine = np.einsum("ij,ij->i", u, v)
    x = np.array(
        [
            features(p.question1, p.question2, float(c), idf, unseen)
            for p, c in zip(train, cosine, strict=True)
        ]
    )
    y = np.array([p.label for p in train], dtype=np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-9
    w = fit_logistic((x - mean) / std, y)
    train_texts = {t.lower() for p in train for t in (p.question1, p.question2)}

    lines = [
        "# Guard on the query streams: cosine threshold vs verifier, at matched hit recall",
        "",
        "`python -m research.guard_streams`: verifier fit on the training groups of the dev pairs "
        f"(seed {SEED}); each dev stream replayed in memory with exact top-{TOP_K} cosine "
        f"neighbours; verifier decisions also require cosine >= {COSINE_FLOOR}.",
        "",
    ]
    for name in ("qqp", "mqp", "comqa"):
        stream = load_stream(DATA / f"workload_{name}.jsonl")
        overlap = sum(1 for q in stream if q.query.lower() in train_texts)
        stream_vectors = await embed_cached([normalize_prompt(q.query) for q in stream], name)
        pair_stub = [
            Pair(id="", source=q.source, question1=q.query, question2="", label=0) for q in stream
        ]

        def verifier_prob(
            t: int,
            s: int,
            cos: float,
            stubs: list[Pair] = pair_stub,
            queries: list[StreamQuery] = stream,
        ) -> float:
            pair = msgspec.structs.replace(stubs[t], question2=queries[s].query)
            z = (np.array(features(pair.question1, pair.question2, cos, idf, unseen)) - mean) / std
            return float(1 / (1 + np.exp(-(z @ w[:-1] + w[-1]))))

        rows = []
        for t_cos in (0.80, 0.85, 0.88, 0.90, 0.92, 0.95):
            served = replay(stream, stream_vectors, lambda t, s, c, th=t_cos: c >= th)
            rows.append(("cosine", t_cos, score(stream, served)))
        for p_min in (0.5, 0.6, 0.7, 0.8, 0.9):
            served = replay(
                stream,
                stream_vectors,
                lambda t, s, c, pm=p_min: c >= COSINE_FLOOR and verifier_prob(t, s, c) >= pm,
            )
            rows.append(("verifier", p_min, score(stream, served)))
        lines += [
            f"## {name} ({len(stream)} queries; {overlap} also in the training pairs)",
            "",
            "| decision | at | served | precision | hit recall | answer precision |",
            "|---|---|---|---|---|---|",
        ]
        for kind, at, r in rows:
            answer = f"{r['answer_precision']:.3f}" if name == "comqa" else "-"
            lines.append(
                f"| {kind} | {at} | {int(r['served'])} | {r['precision']:.3f} | "
                f"{r['hit_recall']:.3f} | {answer} |"
            )
        lines.append("")
        print("\n".join(lines[-len(rows) - 5 :]), flush=True)
    OUT.write_text("\n".join(lines))


if __name__ == "__main__":
    asyncio.run(main())
