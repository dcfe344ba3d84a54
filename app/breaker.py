"""A circuit breaker between the request path and a dependency: fail fast while it is away.

Each call the request path makes to the dependency runs through `CircuitBreaker.call` with a
time budget. A failure the dependency is blamed for, or an overrun, counts;
`failure_threshold` of them in a row open the breaker. While it is open, `call` raises the
breaker's refusal at once: no attempt, no waiting on the request path. A background probe
runs every `probe_interval` and closes the breaker once it succeeds, so the dependency is used
again by itself. Redis (app/cache/breaker.py) and the embedder (app/service/embedding.py)
each have one; they differ in what counts as a failure and what a refusal raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from app.errors import SentinelError

log = logging.getLogger("sentinel.breaker")

T = TypeVar("T")


class CircuitBreaker:
    """Counts consecutive failures; open, it refuses calls until its probe succeeds."""

    # What the dependency is called in log lines, and what the breaker open means.
    subject = "the dependency"
    bypassed = "dependency bypassed"
    # Exceptions that count against the dependency; any other means it answered.
    failures: tuple[type[Exception], ...] = (SentinelError,)

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

    def refusal(self, message: str) -> SentinelError:
        """The error a refused, late or failed call raises."""
        return SentinelError(message)

    def late(self, what: str, budget: float) -> str:
        """The message of a call cut at its budget."""
        return f"{what} skipped: {self.subject} did not answer within {budget * 1000:.0f} ms"

    def needs_repair(self, exc: BaseException) -> bool:
        """Whether a failure opens the breaker at once, whatever the count."""
        return False

    @property
    def is_open(self) -> bool:
        """Whether calls are refused (the dependency is bypassed)."""
        return self._opened_at is not None

    @property
    def open_for(self) -> float:
        """Seconds the breaker has been open (0 when closed)."""
        return 0.0 if self._opened_at is None else time.monotonic() - self._opened_at

    async def call(self, operation: Callable[[], Awaitable[T]], *, budget: float, what: str) -> T:
        """`operation()` within `budget` seconds; the refusal if refused, late or failed."""
        if self._opened_at is not None:
            self.refused += 1
            raise self.refusal(f"{what} skipped: {self.bypassed} ({self.reason})")
        try:
            async with asyncio.timeout(budget):
                result = await operation()
        except TimeoutError:
            self.record_failure(f"{what} took longer than {budget * 1000:.0f} ms")
            raise self.refusal(self.late(what, budget)) from None
        except self.failures as exc:
            message = _message(exc)
            self.record_failure(f"{what}: {message}", repair=self.needs_repair(exc))
            raise self.refusal(f"{what} skipped: {message}") from exc
        except Exception:
            # The dependency answered; what it said is the caller's business.
            self.record_success()
            raise
        self.record_success()
        return result

    def record_success(self) -> None:
        """The dependency answered: the run of failures is over (open waits for its probe)."""
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
        """Open now: bypass the dependency and probe it in the background until it answers."""
        if self._opened_at is not None:
            return
        self._opened_at = time.monotonic()
        self.reason = reason
        self.probe_error = ""
        log.warning(
            "%s: circuit breaker open (%s); probing %s", self.bypassed, reason, self.subject
        )
        self._probing = asyncio.get_running_loop().create_task(
            self._probe_until_closed(), name=f"sentinel-probe-{type(self).__name__}"
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
            except Exception as exc:  # whatever failed, the dependency stays bypassed
                self.probe_error = _message(exc)
            else:
                break
            log.debug("probe of %s failed: %s", self.subject, self.probe_error)
        log.info(
            "%s answers again after %.1f s bypassed; breaker closed", self.subject, self.open_for
        )
        self._opened_at = None
        self._failures = 0
        self.reason = self.probe_error = ""
        self._probing = None


def _message(exc: BaseException) -> str:
    return exc.message if isinstance(exc, SentinelError) else repr(exc)
