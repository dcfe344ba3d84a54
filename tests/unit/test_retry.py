"""app/providers/retry.py: Retry-After parsing and the bounded retry loop."""

from __future__ import annotations

import asyncio
import email.utils
import time
from typing import TypedDict

import pytest

from app.providers.retry import (
    DeadlineExceeded,
    RetriesExhausted,
    Retryable,
    backoff_delay,
    parse_retry_after,
    with_retries,
)

NOW = 1_700_000_000.0


class Backoff(TypedDict):
    """with_retries' backoff keywords, typed so `**FAST` passes mypy."""

    base_delay: float
    max_delay: float


# Tiny backoff so the loop's logic, not its sleeping, is what these tests measure.
FAST: Backoff = {"base_delay": 0.001, "max_delay": 0.002}


class Attempts:
    """A scripted `attempt`: raises the queued exceptions in order, then returns "ok"."""

    def __init__(self, *outcomes: BaseException, hang: float = 0.0) -> None:
        self.outcomes = list(outcomes)
        self.hang = hang
        self.remaining: list[float] = []

    @property
    def count(self) -> int:
        """How many times the attempt was called."""
        return len(self.remaining)

    async def __call__(self, remaining: float) -> str:
        """Record the budget, optionally hang, then fail or succeed as scripted."""
        self.remaining.append(remaining)
        if self.hang:
            await asyncio.sleep(self.hang)
        if self.outcomes:
            raise self.outcomes.pop(0)
        return "ok"


# -- parse_retry_after ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0", 0.0), ("5", 5.0), (" 120 ", 120.0), ("1.5", 1.5)],
)
def test_parse_retry_after_seconds(value: str, expected: float) -> None:
    assert parse_retry_after(value, now=NOW) == expected


def test_parse_retry_after_http_date() -> None:
    header = email.utils.formatdate(NOW + 30, usegmt=True)
    assert parse_retry_after(header, now=NOW) == pytest.approx(30.0)


def test_parse_retry_after_http_date_in_the_past_is_zero() -> None:
    header = email.utils.formatdate(NOW - 3600, usegmt=True)
    assert parse_retry_after(header, now=NOW) == 0.0


def test_parse_retry_after_date_without_zone_is_gmt_not_local_time() -> None:
    # "-0000" parses to a naive datetime; reading it as local time would shift it by hours.
    header = email.utils.formatdate(NOW + 30, usegmt=True).replace("GMT", "-0000")
    assert parse_retry_after(header, now=NOW) == pytest.approx(30.0)


@pytest.mark.parametrize(
    "value",
    [None, "", "   ", "soon", "-3", "nan", "inf", "1_0", "0x10", "Mon, 99 Foo 20", "3 seconds"],
)
def test_parse_retry_after_garbage_is_none(value: str | None) -> None:
    assert parse_retry_after(value, now=NOW) is None


# -- backoff_delay ---------------------------------------------------------------------------


@pytest.mark.parametrize("attempt", [1, 2, 3, 6])
def test_backoff_delay_stays_within_the_capped_exponential(attempt: int) -> None:
    ceiling = min(1.0, 0.25 * 2 ** (attempt - 1))
    delays = [backoff_delay(attempt, base=0.25, cap=1.0) for _ in range(200)]
    assert all(0.0 <= d <= ceiling for d in delays)


# -- with_retries ----------------------------------------------------------------------------


async def test_succeeds_after_retryable_failures() -> None:
    attempt = Attempts(Retryable("429"), Retryable("503"))
    result = await with_retries(attempt, deadline=time.monotonic() + 5, max_attempts=3, **FAST)
    assert result == "ok"
    assert attempt.count == 3


async def test_attempt_gets_the_remaining_budget() -> None:
    attempt = Attempts(Retryable("503"))
    await with_retries(attempt, deadline=time.monotonic() + 2, **FAST)
    first, second = attempt.remaining
    assert 0 < second < first <= 2


async def test_exhaustion_after_exactly_max_attempts() -> None:
    errors = [Retryable("503 #1"), Retryable("503 #2"), Retryable("503 #3"), Retryable("never")]
    attempt = Attempts(*errors)
    with pytest.raises(RetriesExhausted) as info:
        await with_retries(attempt, deadline=time.monotonic() + 5, max_attempts=3, **FAST)
    assert attempt.count == 3
    assert info.value.attempts == 3
    assert info.value.last is errors[2]


async def test_retry_after_is_honoured() -> None:
    attempt = Attempts(Retryable("429", retry_after=0.2))
    started = time.monotonic()
    await with_retries(attempt, deadline=started + 5, base_delay=0.0, max_delay=0.0)
    assert attempt.count == 2
    assert time.monotonic() - started >= 0.2


async def test_retry_after_beyond_the_deadline_stops_without_sleeping() -> None:
    attempt = Attempts(Retryable("429", retry_after=10.0))
    started = time.monotonic()
    with pytest.raises(RetriesExhausted) as info:
        await with_retries(attempt, deadline=started + 1.0, max_attempts=3, **FAST)
    assert attempt.count == 1
    assert info.value.attempts == 1
    assert time.monotonic() - started < 0.5


async def test_non_retryable_exception_propagates_at_once() -> None:
    attempt = Attempts(ValueError("bad request"), Retryable("never reached"))
    with pytest.raises(ValueError, match="bad request"):
        await with_retries(attempt, deadline=time.monotonic() + 5, **FAST)
    assert attempt.count == 1


async def test_attempts_own_timeout_error_is_not_the_deadline() -> None:
    # A TimeoutError from inside the attempt (e.g. a connect timeout) must not be
    # mistaken for the overall deadline, which is still far away.
    attempt = Attempts(TimeoutError("connect timed out"))
    with pytest.raises(TimeoutError, match="connect timed out") as info:
        await with_retries(attempt, deadline=time.monotonic() + 5, **FAST)
    assert not isinstance(info.value, DeadlineExceeded)
    assert attempt.count == 1


async def test_deadline_interrupts_a_hanging_attempt() -> None:
    attempt = Attempts(hang=10.0)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        await with_retries(attempt, deadline=started + 0.1, **FAST)
    assert 0.09 <= time.monotonic() - started < 0.5
    assert attempt.count == 1


async def test_deadline_already_passed_makes_no_attempt() -> None:
    attempt = Attempts()
    with pytest.raises(DeadlineExceeded):
        await with_retries(attempt, deadline=time.monotonic() - 1, **FAST)
    assert attempt.count == 0


async def test_max_attempts_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        await with_retries(Attempts(), deadline=time.monotonic() + 5, max_attempts=0)
