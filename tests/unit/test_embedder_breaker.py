"""The embedder's budget and breaker: a stuck ONNX run holds neither the loop nor a request."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tokenizers import Tokenizer

import app.providers.embedders.local as local
from app.errors import EmbeddingError, EmbeddingSkipped
from app.providers.embedders.breaker import EmbedderBreaker
from app.providers.embedders.local import BASE_MODEL, LocalEmbedder

TOKENIZER = Path(local.__file__).parent / "data" / "tokenizer.json"


class StuckSession:
    """An onnxruntime session whose runs block until released (a wedged native call)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.runs = 0

    def run(self, names: list[str], feeds: dict[str, Any]) -> list[Any]:
        self.runs += 1
        self.release.wait(60)
        rows, tokens = feeds["input_ids"].shape
        return [np.ones((rows, tokens, local.DIMENSION), dtype=np.float32)]


class Flaky:
    """An embedder that fails until told it is back; counts its calls."""

    id = "flaky"
    dimension = 4

    def __init__(self) -> None:
        self.up = False
        self.calls = 0

    async def embed(self, text: str) -> Any:
        self.calls += 1
        if not self.up:
            raise EmbeddingError("Jina answered 503")
        return np.ones(4, dtype=np.float32) / 2

    async def embed_many(self, texts: Any) -> Any:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


@pytest.mark.parametrize("batching", [False, True], ids=["one-by-one", "micro-batched"])
async def test_a_stuck_onnx_run_holds_neither_the_loop_nor_the_request(batching: bool) -> None:
    session = StuckSession()
    tokenizer = Tokenizer.from_file(str(TOKENIZER))
    # The base model's name: the shipped model runs texts alone and never micro-batches.
    embedder = LocalEmbedder(
        session,  # type: ignore[arg-type]
        tokenizer,
        model=BASE_MODEL,
        workers=1,
        batching=batching,
    )
    assert (embedder._batcher is not None) == batching
    breaker = EmbedderBreaker(embedder, budget=0.2, failure_threshold=2, probe_interval=60)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        # Without the budget this would wait for the stuck run, i.e. forever.
        with pytest.raises(EmbeddingSkipped, match="did not answer within 200 ms"):
            await asyncio.wait_for(breaker.embed("What is HNSW?"), timeout=10)
        assert ticks > 0  # the event loop kept running meanwhile
        # The second queues behind the stuck run and is dropped at its budget: never run.
        with pytest.raises(EmbeddingSkipped):
            await asyncio.wait_for(breaker.embed("What is a vector index?"), timeout=10)
        assert breaker.is_open
        refused = breaker.refused
        with pytest.raises(EmbeddingSkipped, match="semantic layer is skipped"):
            await breaker.embed("A third question")
        assert breaker.refused == refused + 1
        assert session.runs == 1
    finally:
        session.release.set()
        ticker.cancel()
        await breaker.aclose()
        await embedder.aclose()


async def test_failures_open_the_breaker_and_the_probe_closes_it() -> None:
    flaky = Flaky()
    breaker = EmbedderBreaker(flaky, budget=1.0, failure_threshold=3, probe_interval=0.02)
    try:
        for _ in range(2):
            with pytest.raises(EmbeddingSkipped, match="Jina answered 503"):
                await breaker.embed("q")
        assert not breaker.is_open  # two in a row: not yet
        with pytest.raises(EmbeddingSkipped):
            await breaker.embed("q")
        assert breaker.is_open
        assert "Jina answered 503" in breaker.reason
        calls = flaky.calls
        with pytest.raises(EmbeddingSkipped):
            await breaker.embed("q")  # refused without calling the embedder (only probes do)
        flaky.up = True
        deadline = asyncio.get_running_loop().time() + 5
        while breaker.is_open:
            assert asyncio.get_running_loop().time() < deadline, "the probe did not close it"
            await asyncio.sleep(0.01)
        assert flaky.calls > calls  # the probe embedded
        vector = await breaker.embed("q")
        assert vector.shape == (4,)
    finally:
        await breaker.aclose()
