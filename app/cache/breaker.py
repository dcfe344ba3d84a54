"""A circuit breaker between the request path and Redis: fail fast while Redis is away.

Every cache operation a request makes runs through `CacheBreaker.call` with a time budget.
A failure (connection refused or reset, LOADING, a reply error) or an overrun counts;
`failure_threshold` of them in a row open the breaker. While it is open, `call` raises
CacheBypassed at once: no connection attempt and no waiting on the request path. A background
probe (PING, then the index, recreated if Redis came back empty) runs every `probe_interval`
and closes the breaker once it succeeds, so caching resumes by itself.

An error saying the index is missing opens the breaker at once whatever the count: lookups on
the exact key still work then, so the failures would never be consecutive, and only the
probe repairs the index.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from app.cache.errors import CacheBypassed, needs_repair
from app.errors import CacheUnavailable

log = logging.getLogger("sentinel.cache")

T = TypeVar("T")


class CacheBreaker:
    """Counts consecutive Redis failures; open, it refuses calls until its probe succeeds."""

    def __init__(
        self,
        probe: Callable[[], Awaitable[object]],
        *,
        failure_threshold: int = 3,
        probe_interval: float = 1.0,
        probe_timeout: float = 1.0,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self._probe = probe
        self.failure_threshold = failure_threshold
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self._failures = 0
        self._opened_at: float | None = None
        self._probing: asyncio.Task[None] | None = None
        # Why the breaker opened, and what the probe last saw (for /health).
        self.reason = ""
        self.probe_error = ""
        # Calls refused while open, since start.
        self.refused = 0

    @property
    def is_open(self) -> bool:
        """Whether calls are refused (the cache is bypassed)."""
        return self._opened_at is not None

    @property
    def open_for(self) -> float:
        """Seconds the breaker has been open (0 when closed)."""
        return 0.0 if self._opened_at is None else time.monotonic() - self._opened_at

    async def call(self, operation: Callable[[], Awaitable[T]], *, budget: float, what: str) -> T:
        """`operation()` within `budget` seconds; CacheBypassed if refused, late or failed."""
        if self._opened_at is not None:
            self.refused += 1
            raise CacheBypassed(f"{what} skipped: the cache is bypassed ({self.reason})")
        try:
            async with asyncio.timeout(budget):
                result = await operation()
        except TimeoutError:
            self.record_failure(f"{what} took longer than {budget * 1000:.0f} ms")
            raise CacheBypassed(f"{what} skipped: Redis did not answer in time") from None
        except CacheUnavailable as exc:
            self.record_failure(f"{what}: {exc.message}", repair=needs_repair(exc))
            raise CacheBypassed(f"{what} skipped: {exc.message}") from exc
        except Exception:
            # Redis answered; what it said (a remembered failure, say) is the caller's business.
            self.record_success()
            raise
        self.record_success()
        return result

    def record_success(self) -> None:
        """Redis answered: the run of failures is over (an open breaker waits for its probe)."""
        if self._opened_at is None:
            self._failures = 0

    def record_failure(self, reason: str, *, repair: bool = False) -> None:
        """Count a failure; open on the threshold-th in a row, or at once when `repair`."""
        if self._opened_at is not None:
            return
        self._failures += 1
        if repair or self._failures >= self.failure_threshold:
            self.trip(reason)

    def trip(self, reason: str) -> None:
        """Open now: bypass the cache and probe Redis in the background until it answers."""
        if self._opened_at is not None:
            return
        self._opened_at = time.monotonic()
        self.reason = reason
        self.probe_error = ""
        log.warning("cache bypassed: circuit breaker open (%s); probing Redis", reason)
        self._probing = asyncio.get_running_loop().create_task(
            self._probe_until_closed(), name="sentinel-cache-probe"
        )

    async def aclose(self) -> None:
        """Stop probing (at shutdown)."""
        task, self._probing = self._probing, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _probe_until_closed(self) -> None:
        while True:
            await asyncio.sleep(self.probe_interval)
            try:
                async with asyncio.timeout(self.probe_timeout):
                    await self._probe()
            except TimeoutError:
                self.probe_error = f"no answer within {self.probe_timeout * 1000:.0f} ms"
            except Exception as exc:  # whatever failed, the cache stays bypassed
                self.probe_error = exc.message if isinstance(exc, CacheUnavailable) else repr(exc)
            else:
                break
            log.debug("Redis probe failed: %s", self.probe_error)
        log.info("cache resumed: Redis answers again after %.1f s bypassed", self.open_for)
        self._opened_at = None
        self._failures = 0
        self.reason = self.probe_error = ""
        self._probing = None
