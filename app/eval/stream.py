"""A workload stream (the data README's schema) and how what a replay served from it is scored:
the whole stream, or the queries of the clusters that hold a held-out text of the dev pairs."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path

import msgspec

from app.eval.split import split_by_group


class StreamQuery(msgspec.Struct, frozen=True, kw_only=True):
    """One line of a workload stream (the data README's schema)."""

    t: int
    query: str
    source: str
    cluster: str
    expected: str
    duplicate_of: list[int] = []
    known_non_duplicate_of: list[int] = []
    answer_key: str | None = None


class Served(msgspec.Struct, kw_only=True):
    """What a replay served, scored against the stream's clusters (and answers, for ComQA)."""

    served: int
    true_hits: int
    confirmed_false_positives: int
    inferred_false_positives: int
    precision: float
    hit_recall: float
    answer_precision: float | None = None


class SweepPoint(Served, kw_only=True):
    """The same scores had the decision been taken at another threshold."""

    threshold: float


class HeldOut(Served, kw_only=True):
    """The same replay scored on the queries of the clusters holding a held-out pairs text."""

    pairs: str
    n: int
    expected_hits: int
    sweep: list[SweepPoint] | None = None


def load_stream(path: Path) -> list[StreamQuery]:
    """Read a workload JSONL file, in stream order."""
    decoder = msgspec.json.Decoder(StreamQuery)
    rows = [decoder.decode(line) for line in path.read_bytes().splitlines() if line.strip()]
    return sorted(rows, key=lambda row: row.t)


def held_out_queries(
    stream: Sequence[StreamQuery], pairs: Sequence[tuple[str, str]]
) -> frozenset[int]:
    """Positions of the queries whose cluster holds a text of the pairs' held-out groups.

    The split is app/eval/split.py's, the one every quality table uses: the embedder, the guard
    and the verifier were fit on its other side, and the verifier's stream pairs skip every
    such cluster, so no pair scored here was trained or calibrated on.
    """
    held = split_by_group(pairs)
    texts = {text.lower() for pair, h in zip(pairs, held, strict=True) if h for text in pair}
    clusters = {row.cluster for row in stream if row.query.lower() in texts}
    return frozenset(row.t for row in stream if row.cluster in clusters)


def score(
    stream: Sequence[StreamQuery],
    served: Sequence[int | None],
    only: Collection[int] | None = None,
) -> Served:
    """Score served hits (the stream position each query was answered from, or None), over
    every query or the positions in `only`."""
    by_t = {row.t: row for row in stream}
    rows = [
        (row, source)
        for row, source in zip(stream, served, strict=True)
        if only is None or row.t in only
    ]
    hits = true_hits = confirmed = inferred = same_answer = 0
    for row, source_t in rows:
        if source_t is None:
            continue
        hits += 1
        source = by_t[source_t]
        if source.cluster == row.cluster:
            true_hits += 1
        elif source.t in row.known_non_duplicate_of:
            confirmed += 1
        else:
            inferred += 1
        if row.answer_key is not None and source.answer_key == row.answer_key:
            same_answer += 1
    expected = sum(1 for row, _ in rows if row.expected == "hit")
    has_answers = any(row.answer_key is not None for row in stream)
    return Served(
        served=hits,
        true_hits=true_hits,
        confirmed_false_positives=confirmed,
        inferred_false_positives=inferred,
        precision=round(true_hits / hits, 4) if hits else 1.0,
        hit_recall=round(true_hits / expected, 4) if expected else 0.0,
        answer_precision=round(same_answer / hits, 4) if has_answers and hits else None,
    )
