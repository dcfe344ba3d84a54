"""Micro-batching of concurrent one-text embeds: questions that arrive while the pool is busy
run as one ONNX batch of similar token lengths.

Nothing waits for company: a request that finds a free worker runs at once (alone at c=1).
Only requests queued behind busy workers are grouped, and only with others of the same length
bucket, so a short question never pads to a long one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Final, Generic, TypeVar

import numpy as np
import numpy.typing as npt

from app.providers.embedders.base import Vector

W = TypeVar("W")

# Upper bounds of the length buckets (word pieces). A batch pads its rows to its longest, so
# a bucket spans at most a third more tokens than its shortest row (half past 64). On this
# machine one ONNX run of 8 rows costs ~1.5x less per row than 8 single runs (a ~1 ms fixed
# cost per run, small matrices), which pays for that padding (bench/semantic-study.md).
BUCKET_BOUNDS: Final = (6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64, 96, 128, 192, 256)


def length_bucket(tokens: int) -> int:
    """The bucket of a text of `tokens` word pieces: the first bound at or above it."""
    for bound in BUCKET_BOUNDS:
        if tokens <= bound:
            return bound
    return BUCKET_BOUNDS[-1]


class MicroBatcher(Generic[W]):
    """Groups queued single embeds into batches by length bucket, at most `max_batch` each.

    `run(items)` embeds a batch on the pool and returns one row per item; its error (raised as
    the embedder's own) fails every member of that batch. A caller that gave up (cancelled,
    e.g. by the embedder's budget) is skipped if still queued and ignored if already running.
    """

    def __init__(
        self,
        run: Callable[[list[W]], Awaitable[npt.NDArray[np.float32]]],
        *,
        workers: int,
        max_batch: int,
    ) -> None:
        self._run = run
        self._workers = workers
        self._max_batch = max_batch
        self._busy = 0
        # Bucket → queued (item, future); dict order is the order buckets were first queued,
        # so the oldest waiting bucket goes next.
        self._queued: dict[int, list[tuple[W, asyncio.Future[Vector]]]] = {}
        self.batches = 0
        self.rows = 0

    async def embed(self, item: W, tokens: int) -> Vector:
        """`item`'s vector, run alone if a worker is free, else batched with its bucket."""
        future: asyncio.Future[Vector] = asyncio.get_running_loop().create_future()
        self._queued.setdefault(length_bucket(tokens), []).append((item, future))
        self._dispatch()
        return await future

    def _dispatch(self) -> None:
        while self._busy < self._workers and self._queued:
            bucket = next(iter(self._queued))
            waiting = [(i, f) for i, f in self._queued[bucket] if not f.done()]
            batch, rest = waiting[: self._max_batch], waiting[self._max_batch :]
            if rest:
                # Re-queued at the back: another bucket that waited goes first.
                del self._queued[bucket]
                self._queued[bucket] = rest
            else:
                del self._queued[bucket]
            if not batch:
                continue
            self._busy += 1
            asyncio.get_running_loop().create_task(self._run_batch(batch))

    async def _run_batch(self, batch: list[tuple[W, asyncio.Future[Vector]]]) -> None:
        try:
            rows = await self._run([item for item, _ in batch])
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            self.batches += 1
            self.rows += len(batch)
            for row, (_, future) in zip(rows, batch, strict=True):
                if not future.done():
                    future.set_result(row)
        finally:
            self._busy -= 1
            self._dispatch()
