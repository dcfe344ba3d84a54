"""app.eval's stream scoring: the whole stream, or the held-out clusters' queries alone."""

from __future__ import annotations

from app.eval.split import split_by_group
from app.eval.stream import StreamQuery, held_out_queries, score


def row(
    t: int, query: str, cluster: str, *, dup: int | None = None, near: int | None = None
) -> StreamQuery:
    return StreamQuery(
        t=t,
        query=query,
        source="test",
        cluster=cluster,
        expected="miss" if dup is None else "hit",
        duplicate_of=[] if dup is None else [dup],
        known_non_duplicate_of=[] if near is None else [near],
    )


def test_scoring_a_subset_counts_only_its_queries() -> None:
    stream = [
        row(0, "a", "A"),
        row(1, "a too", "A", dup=0),
        row(2, "b", "B"),
        row(3, "b too", "B", dup=2),
        row(4, "not b", "C", near=2),
    ]
    served = [None, 0, None, None, 2]  # A's paraphrase hit; B's missed; a near miss served
    everything = score(stream, served)
    assert (everything.served, everything.true_hits, everything.confirmed_false_positives) == (
        2,
        1,
        1,
    )
    assert everything.hit_recall == 0.5
    only_b = score(stream, served, frozenset({2, 3, 4}))
    assert (only_b.served, only_b.true_hits, only_b.confirmed_false_positives) == (1, 0, 1)
    assert only_b.hit_recall == 0.0
    assert only_b.precision == 0.0
    only_a = score(stream, served, frozenset({0, 1}))
    assert (only_a.served, only_a.true_hits, only_a.precision, only_a.hit_recall) == (
        1,
        1,
        1.0,
        1.0,
    )


def test_held_out_queries_are_whole_clusters_holding_a_held_out_text() -> None:
    pairs = [(f"question {i}", f"question {i} reworded") for i in range(40)]
    held = split_by_group(pairs)
    assert 0 < held.sum() < len(pairs)
    stream = []
    for i, (first, _) in enumerate(pairs):
        # Each cluster: one pairs text (case differs) and one text pairs.jsonl never had.
        stream += [
            row(2 * i, first.upper(), f"c{i}"),
            row(2 * i + 1, f"other {i}", f"c{i}", dup=2 * i),
        ]
    positions = held_out_queries(stream, pairs)
    expected = {t for i, h in enumerate(held) if h for t in (2 * i, 2 * i + 1)}
    assert positions == expected
