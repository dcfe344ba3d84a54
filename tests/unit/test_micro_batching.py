"""Micro-batching of concurrent embeds: same vectors, failures shared, batches by length."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from app.errors import EmbeddingError
from app.providers.embedders.batching import BUCKET_BOUNDS, MicroBatcher, length_bucket
from app.providers.embedders.local import BASE_MODEL, DEFAULT_MODEL, ONE_TEXT_PER_RUN, LocalEmbedder

QUESTIONS = [
    "What is a semantic cache?",
    "How do I reset my router to factory settings?",
    "Why is the sky blue?",
    "How do vaccines work?",
    "What is the difference between a virus and bacteria, and how does each make you ill?",
    "Who wrote Pride and Prejudice?",
    "How do I center a div in CSS?",
    "How much water should a person drink daily in a hot climate when exercising a lot?",
] * 3


async def test_concurrent_embeds_give_the_vectors_of_one_at_a_time() -> None:
    # The base model runs texts together (the shipped one runs each alone: no batcher).
    alone = await LocalEmbedder.load(model=BASE_MODEL, workers=1)
    batched = await LocalEmbedder.load(model=BASE_MODEL, workers=1, batching=True)
    try:
        expected = [await alone.embed(q) for q in QUESTIONS]
        got = await asyncio.gather(*(batched.embed(q) for q in QUESTIONS))
        assert batched._batcher is not None
        assert batched._batcher.batches < len(QUESTIONS)  # some ran together
        for want, have in zip(expected, got, strict=True):
            np.testing.assert_allclose(have, want, atol=1e-5)
    finally:
        await alone.aclose()
        await batched.aclose()


async def test_a_model_run_one_text_at_a_time_has_no_batcher() -> None:
    assert DEFAULT_MODEL in ONE_TEXT_PER_RUN
    embedder = await LocalEmbedder.load(workers=1, batching=True)
    try:
        assert embedder._batcher is None
        got = await asyncio.gather(*(embedder.embed(q) for q in QUESTIONS[:8]))
        for question, vector in zip(QUESTIONS[:8], got, strict=True):
            np.testing.assert_array_equal(vector, await embedder.embed(question))
    finally:
        await embedder.aclose()


def test_length_buckets_bound_the_padding() -> None:
    assert [length_bucket(n) for n in (1, 6, 7, 8, 9, 12, 13, 16, 17, 33, 256, 300)] == [
        6, 6, 8, 8, 10, 12, 16, 16, 20, 40, 256, 256,
    ]  # fmt: skip
    # The shortest row of a bucket pads by at most a third (half past 64 tokens).
    for low, high in itertools.pairwise(BUCKET_BOUNDS):
        assert high - (low + 1) <= (low + 1) // (3 if high <= 64 else 2)


class Recorded:
    """A batch runner that records its batches; the first waits until released."""

    def __init__(self, fail: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.release = asyncio.Event()
        self.fail = fail

    async def __call__(self, items: list[str]) -> npt.NDArray[np.float32]:
        self.batches.append(items)
        if len(self.batches) == 1:
            await self.release.wait()
        if self.fail:
            raise EmbeddingError("the local embedder failed: Fail boom")
        return np.array([[float(len(item))] for item in items], dtype=np.float32)


async def until(condition: Any) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


async def test_queued_embeds_run_in_batches_of_one_length_bucket() -> None:
    run = Recorded()
    batcher = MicroBatcher(run, workers=1, max_batch=2)
    first = asyncio.ensure_future(batcher.embed("first", 5))
    await until(lambda: len(run.batches) == 1)  # at once, alone: nothing waits for company
    queued = [("short-a", 5), ("long-a", 30), ("short-b", 6), ("short-c", 4), ("long-b", 31)]
    rest = [asyncio.ensure_future(batcher.embed(item, tokens)) for item, tokens in queued]
    await asyncio.sleep(0)
    run.release.set()
    vectors = await asyncio.gather(first, *rest)
    # Each caller gets its own row; batches hold one bucket, oldest bucket first, at most 2.
    assert [float(v[0]) for v in vectors] == [5, 7, 6, 7, 7, 6]
    assert run.batches == [["first"], ["short-a", "short-b"], ["long-a", "long-b"], ["short-c"]]


async def test_a_failed_batch_fails_each_of_its_members_with_the_embedders_error() -> None:
    run = Recorded(fail=True)
    batcher = MicroBatcher(run, workers=1, max_batch=8)
    calls = [asyncio.ensure_future(batcher.embed(f"q{i}", 5)) for i in range(4)]
    await until(lambda: len(run.batches) == 1)
    run.release.set()
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert run.batches == [["q0"], ["q1", "q2", "q3"]]
    assert all(isinstance(o, EmbeddingError) for o in outcomes)
    assert "Fail boom" in str(outcomes[3])


async def test_a_caller_that_gave_up_is_not_embedded() -> None:
    run = Recorded()
    batcher = MicroBatcher(run, workers=1, max_batch=8)
    first = asyncio.ensure_future(batcher.embed("first", 5))
    await until(lambda: len(run.batches) == 1)
    late = asyncio.ensure_future(batcher.embed("abandoned", 5))
    kept = asyncio.ensure_future(batcher.embed("kept", 5))
    await asyncio.sleep(0)
    late.cancel()  # e.g. the embedder's budget ran out while it was queued
    run.release.set()
    await asyncio.gather(first, kept)
    assert run.batches == [["first"], ["kept"]]
    with pytest.raises(asyncio.CancelledError):
        await late
