"""Bounded retries with exponential backoff, jitter and Retry-After, inside one deadline."""

from __future__ import annotations

import asyncio
import email.utils
import random
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC
from typing import TypeVar

T = TypeVar("T")

# RFC 9110 delta-seconds is digits only; a fraction is tolerated since some providers send one.
_DELTA_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")


class Retryable(Exception):
    """An attempt failed in a way worth retrying (429, 5xx, connection error)."""

    def __init__(self, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class DeadlineExceeded(Exception):
    """The total deadline passed before an attempt succeeded."""


class RetriesExhausted(Exception):
    """Every attempt failed with a retryable error; `last` is the final one."""

    def __init__(self, last: Retryable, attempts: int) -> None:
        super().__init__(f"{last.reason} (after {attempts} attempts)")
        self.last = last
        self.attempts = attempts


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    # A regex, not bare float(): that also takes "nan", "inf", "-3" and "1_0".
    if _DELTA_SECONDS.fullmatch(value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        # "-0000" or no zone gives a naive datetime; HTTP dates are always GMT, not local time.
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_delay(attempt: int, *, base: float, cap: float) -> float:
    """Full-jitter exponential backoff for the given 1-based attempt number."""
    return random.uniform(0.0, min(cap, base * (2 ** (attempt - 1))))


async def with_retries(
    attempt: Callable[[float], Awaitable[T]],
    *,
    deadline: float,
    max_attempts: int = 3,
    base_delay: float = 0.25,
    max_delay: float = 4.0,
) -> T:
    """Call `attempt(remaining_seconds)` until it succeeds, at most `max_attempts` times.

    `deadline` is an absolute `time.monotonic()` value. `attempt` raises Retryable for
    failures worth another try; anything else propagates at once. A Retry-After that
    would overrun the deadline ends the retries instead of sleeping past it.
    """
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    last: Retryable | None = None
    for number in range(1, max_attempts + 1):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded
        # asyncio.timeout (not wait_for) so only *our* expiry becomes DeadlineExceeded: a
        # TimeoutError raised by the attempt itself (e.g. aiohttp's connect timeout) is the
        # attempt's business and propagates unchanged.
        scope = asyncio.timeout(remaining)
        try:
            async with scope:
                return await attempt(remaining)
        except TimeoutError:
            if scope.expired():
                raise DeadlineExceeded from None
            raise
        except Retryable as exc:
            last = exc
        if number == max_attempts:
            break
        delay = backoff_delay(number, base=base_delay, cap=max_delay)
        if last.retry_after is not None:
            delay = max(delay, last.retry_after)
        if time.monotonic() + delay >= deadline:
            break
        await asyncio.sleep(delay)
    assert last is not None
    raise RetriesExhausted(last, number)
