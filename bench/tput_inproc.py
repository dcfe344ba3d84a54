"""bench/throughput.py's in-process references: embed + KNN with the service's own classes,
and redisvl's SemanticCache on the same embedder; no HTTP, no scope work, no guard."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from app.cache import keys
from app.cache.store import CacheStore
from app.providers.embedders.local import LocalEmbedder
from app.settings import Settings
from bench.stats import Summary

Op = Callable[[int], Awaitable[bool]]


@dataclass(frozen=True)
class OpRun:
    """Latencies of the operations that found what they looked for, and the wall time."""

    latencies_ms: list[float]
    found: int
    total: int
    wall: float

    def rate_of(self, _: str | None) -> float:
        """`rate` (the kind is Run's; an op here is always a semantic lookup)."""
        return self.rate

    def latency_of(self, _: str | None) -> Summary:
        """`latency` (see rate_of)."""
        return self.latency

    @property
    def rate(self) -> float:
        """Successful operations per second."""
        return self.found / self.wall if self.wall > 0 and self.found else float("nan")

    @property
    def latency(self) -> Summary:
        """Latency of the successful operations."""
        return Summary.of(self.latencies_ms)


async def drive(op: Op, n: int, concurrency: int) -> OpRun:
    """`op(i)` for i in range(n) by `concurrency` asyncio tasks in this process."""
    latencies: list[float] = []
    found = 0
    counter = iter(range(n))

    async def worker() -> None:
        nonlocal found
        for i in counter:
            started = time.perf_counter()
            ok = await op(i)
            if ok:
                latencies.append((time.perf_counter() - started) * 1000)
                found += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return OpRun(latencies, found, n, time.perf_counter() - started)


async def entry_scope(redis: Redis, store: CacheStore, entry_id: str) -> str:
    """The scope tag Sentinel stored an entry under (read from its hash)."""
    raw = await redis.hget(keys.entry_key(store.prefix, entry_id), "scope")
    if raw is None:
        raise RuntimeError(f"entry {entry_id} not found in the bench Redis")
    return keys.text(raw)


def embed_knn(
    embedder: LocalEmbedder,
    store: CacheStore,
    *,
    scope: str,
    k: int,
    floor: float,
    texts: Sequence[str],
) -> Op:
    """Embed a paraphrase and run the service's KNN in its scope; found = top cosine ≥ floor."""

    async def op(i: int) -> bool:
        vector = await embedder.embed(texts[i % len(texts)])
        candidates = await store.nearest(vector, scope=scope, k=k)
        return bool(candidates) and candidates[0].similarity >= floor

    return op


class RedisvlCache:
    """redisvl's SemanticCache (FLAT index, range query) on the bench Redis, vectors from the
    service's LocalEmbedder through a CustomVectorizer (no model download)."""

    def __init__(self, redis_url: str, embedder: LocalEmbedder, floor: float) -> None:
        # redisvl ships no type hints: its values stay inside this class.
        from redisvl.extensions.cache.llm import SemanticCache  # noqa: PLC0415
        from redisvl.utils.vectorize import CustomVectorizer  # noqa: PLC0415

        async def aembed(text: str, **_: Any) -> list[float]:
            return [float(x) for x in await embedder.embed(text)]

        def embed(text: str, **_: Any) -> list[float]:
            # Only called once, by CustomVectorizer's constructor, to learn the dimension.
            return [float(x) for x in embedder._embed_batch([text])[0]]

        self._cache: Any = SemanticCache(
            name="bench-throughput-redisvl",
            distance_threshold=1.0 - floor,
            vectorizer=CustomVectorizer(embed=embed, aembed=aembed),
            redis_url=redis_url,
            overwrite=True,
        )

    async def fill(self, prompts: Sequence[str], embedder: LocalEmbedder) -> None:
        """Store every prompt with a short answer (vectors computed in batches)."""
        vectors = await embedder.embed_many(list(prompts))
        for prompt, vector in zip(prompts, vectors, strict=True):
            await self._cache.astore(
                prompt=prompt, response=f"answer to: {prompt}", vector=[float(x) for x in vector]
            )

    def check(self, texts: Sequence[str]) -> Op:
        """acheck(prompt): embed, range query, refresh the TTL of what it found."""

        async def op(i: int) -> bool:
            hits = await self._cache.acheck(prompt=texts[i % len(texts)], num_results=1)
            return bool(hits)

        return op

    async def aclose(self) -> None:
        """Close redisvl's own clients (its index goes with the bench Redis)."""
        await self._cache.adisconnect()


def settings_line(settings: Settings) -> str:
    """The search settings both the service and the in-process reference use."""
    return f"KNN top_k {settings.knn_top_k}, EF_RUNTIME {settings.knn_ef_runtime}"
