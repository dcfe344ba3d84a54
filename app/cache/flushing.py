"""Counts kept in memory and written to Redis by a background task every interval.

The hit counter (hits.py) and the metrics recorder (observability/recorder.py) share this
loop: nothing is tried while the cache is bypassed (`paused()`; the counts wait in memory), a
failed write keeps its counts for the next one and is logged once per outage, and closing
writes what is still pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable

from redis.exceptions import RedisError

from app.errors import CacheUnavailable

log = logging.getLogger("sentinel.cache")

# What a failed write raises: redis-py's errors, or ours at the cache's edge.
_FAILURES = (RedisError, CacheUnavailable)


def _describe(exc: BaseException) -> str:
    return exc.message if isinstance(exc, CacheUnavailable) else type(exc).__name__


class PeriodicFlush(ABC):
    """A background task calling `flush()` every `interval` seconds until `aclose()`."""

    def __init__(self, *, interval: float, what: str) -> None:
        self._interval = interval
        self._what = what  # "hit counts", "metrics": for the logs and the task's name
        self._task: asyncio.Task[None] | None = None
        self._paused: Callable[[], bool] = lambda: False
        self._failing = False
        self._closing = False

    @property
    @abstractmethod
    def pending(self) -> bool:
        """Whether anything waits to be written."""

    @abstractmethod
    async def flush(self) -> None:
        """Write what is pending; on failure keep it for the next flush and raise."""

    def start(self, *, paused: Callable[[], bool] | None = None) -> None:
        """Flush every interval until aclose(); nothing is tried while `paused()` (the cache
        is bypassed: Redis is away) and the counts wait in memory."""
        if paused is not None:
            self._paused = paused
        name = "sentinel-" + self._what.replace(" ", "-")
        self._task = asyncio.create_task(self._run(), name=name)

    async def aclose(self) -> None:
        """Stop the background task and write what is still pending."""
        if self._task is not None:
            # The flag as well as the cancel: on Python 3.11, asyncio.wait_for (redis-py's
            # send) can swallow a cancel that lands as its send completes, and the task would
            # go back to sleep for good, hanging the shutdown (seen once in ~20 benchmark runs).
            self._closing = True
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if not self.pending:
            return
        if self._paused():
            log.warning("%s lost at shutdown: Redis is bypassed", self._what)
            return
        try:
            await self.flush()
        except _FAILURES as exc:
            log.warning("%s lost at shutdown: %s", self._what, _describe(exc))

    async def _run(self) -> None:
        while not self._closing:
            await asyncio.sleep(self._interval)
            if self._paused():
                continue
            try:
                await self.flush()
            except _FAILURES as exc:
                if not self._failing:  # once per outage, not once a second
                    log.warning("%s not written yet: %s", self._what, _describe(exc))
                self._failing = True
            else:
                self._failing = False
