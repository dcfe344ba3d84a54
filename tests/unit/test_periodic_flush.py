"""PeriodicFlush (cache/flushing.py): aclose() stops the task even when a flush swallows the
cancel, as Python 3.11's asyncio.wait_for can (redis-py sends through it)."""

from __future__ import annotations

import asyncio
import contextlib

from app.cache.flushing import PeriodicFlush


class Swallowing(PeriodicFlush):
    """A flush that takes a while and, the first time it is cancelled, returns normally (as
    wait_for does when its inner send completes as the cancel lands)."""

    def __init__(self) -> None:
        super().__init__(interval=0.01, what="test counts")
        self.flushes = 0
        self.swallowed = False
        self.in_flush = asyncio.Event()

    @property
    def pending(self) -> bool:
        return False

    async def flush(self) -> None:
        self.flushes += 1
        self.in_flush.set()
        if self.swallowed:
            await asyncio.sleep(0.05)
            return
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.05)
        self.swallowed = True


async def test_aclose_returns_when_a_flush_swallows_the_cancel() -> None:
    flusher = Swallowing()
    flusher.start()
    await flusher.in_flush.wait()
    closing = asyncio.create_task(flusher.aclose())
    done, _ = await asyncio.wait({closing}, timeout=2.0)
    if not done:  # the bug: the task went on flushing; stop it for good before failing
        while flusher._task is not None and not flusher._task.done():
            flusher._task.cancel()
            await asyncio.sleep(0.01)
    assert done, "aclose() did not return: the flush task swallowed its cancel"
    assert flusher.swallowed
    assert flusher.flushes == 1
