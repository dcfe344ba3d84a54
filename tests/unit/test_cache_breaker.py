"""The circuit breaker in front of Redis, with fake operations and a fake probe (no Redis)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from redis.exceptions import BusyLoadingError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redisvl.exceptions import RedisSearchError

from app.cache.breaker import CacheBreaker
from app.cache.errors import CacheBypassed, needs_repair, redis_errors_as_unavailable
from app.errors import CacheUnavailable


class Probe:
    """A probe that fails with `error` until told Redis is back; counts its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.error: Exception | None = RedisConnectionError("Connection refused")

    @redis_errors_as_unavailable
    async def __call__(self) -> None:
        self.calls += 1
        if self.error is not None:
            raise self.error


def failing(error: Exception) -> Callable[[], Awaitable[None]]:
    @redis_errors_as_unavailable
    async def operation() -> None:
        raise error

    return operation


async def answer() -> str:
    return "value"


async def bypassed(breaker: CacheBreaker, error: Exception, times: int = 1) -> None:
    """`times` lookups that fail with `error`, each one bypassed by the breaker."""
    for _ in range(times):
        with pytest.raises(CacheBypassed):
            await breaker.call(failing(error), budget=1, what="lookup")


async def wait_until_closed(breaker: CacheBreaker, timeout: float = 5.0) -> None:
    await poll(lambda: not breaker.is_open, "the breaker closes", timeout)


async def poll(check: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Wait until `check()` holds; fail after `timeout` seconds (a deadline, not a timing)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.01)


async def test_opens_after_the_threshold_of_failures_in_a_row() -> None:
    breaker = CacheBreaker(Probe(), failure_threshold=3, probe_interval=10)
    refused = RedisConnectionError("Connection refused")
    await bypassed(breaker, refused, times=2)
    assert not breaker.is_open
    with pytest.raises(CacheBypassed, match="ConnectionError"):
        await breaker.call(failing(refused), budget=1, what="lookup")
    assert breaker.is_open
    assert "ConnectionError" in breaker.reason
    await breaker.aclose()


async def test_a_success_ends_the_run_of_failures() -> None:
    breaker = CacheBreaker(Probe(), failure_threshold=2, probe_interval=10)
    for _ in range(3):
        await bypassed(breaker, RedisConnectionError("reset"))
        assert await breaker.call(answer, budget=1, what="lookup") == "value"
    assert not breaker.is_open


async def test_open_refuses_at_once_without_calling_redis() -> None:
    breaker = CacheBreaker(Probe(), failure_threshold=1, probe_interval=10)
    await bypassed(breaker, RedisConnectionError())
    calls = 0

    async def counted() -> None:
        nonlocal calls
        calls += 1

    for _ in range(100):
        with pytest.raises(CacheBypassed, match="bypassed"):
            await breaker.call(counted, budget=1, what="lookup")
    assert calls == 0  # refused without calling: no time spent on Redis
    assert breaker.refused == 100
    await breaker.aclose()


async def test_an_operation_over_budget_is_cut_short_and_counts() -> None:
    breaker = CacheBreaker(Probe(), failure_threshold=2, probe_interval=10)

    async def stalled() -> None:
        await asyncio.sleep(5)

    started = time.perf_counter()
    with pytest.raises(CacheBypassed, match="in time"):
        await breaker.call(stalled, budget=0.05, what="lookup")
    assert time.perf_counter() - started < 2.5  # cut, not the 5 s the operation wanted
    assert not breaker.is_open
    with pytest.raises(CacheBypassed):
        await breaker.call(stalled, budget=0.05, what="lookup")
    assert breaker.is_open
    assert "longer than 50 ms" in breaker.reason
    await breaker.aclose()


async def test_a_missing_index_opens_at_once_and_the_probe_repairs_it() -> None:
    probe = Probe()
    probe.error = None  # Redis answers; the probe's job is to recreate the index
    breaker = CacheBreaker(probe, failure_threshold=3, probe_interval=0.01)
    # redisvl wraps the reply error in its own, not a RedisError.
    missing = RedisSearchError("Error while searching: idx: no such index")
    missing.__cause__ = ResponseError("idx: no such index")
    with pytest.raises(CacheBypassed, match="index missing"):
        await breaker.call(failing(missing), budget=1, what="semantic lookup")
    assert breaker.is_open
    await wait_until_closed(breaker)
    assert probe.calls == 1


async def test_the_probe_closes_the_breaker_once_redis_answers() -> None:
    probe = Probe()
    breaker = CacheBreaker(probe, failure_threshold=1, probe_interval=0.01)
    await bypassed(breaker, RedisConnectionError())
    await poll(lambda: probe.calls >= 3, "the probe keeps trying")
    assert breaker.is_open
    assert "ConnectionError" in breaker.probe_error
    probe.error = None
    await wait_until_closed(breaker)
    assert await breaker.call(answer, budget=1, what="lookup") == "value"
    assert breaker.reason == breaker.probe_error == ""


async def test_loading_redis_is_a_failure_and_keeps_the_breaker_open() -> None:
    """After a restart Redis answers LOADING until its AOF is replayed: bypass, do not fail."""
    probe = Probe()
    probe.error = BusyLoadingError("Redis is loading the dataset in memory")
    breaker = CacheBreaker(probe, failure_threshold=1, probe_interval=0.01)
    loading = failing(BusyLoadingError("Redis is loading the dataset in memory"))
    with pytest.raises(CacheBypassed, match="BusyLoadingError") as caught:
        await breaker.call(loading, budget=1, what="exact lookup")
    assert isinstance(caught.value, CacheUnavailable)  # what the request path catches
    await poll(lambda: "BusyLoadingError" in breaker.probe_error, "the probe sees LOADING")
    assert breaker.is_open
    probe.error = None
    await wait_until_closed(breaker)


async def test_an_answer_that_is_an_error_counts_as_redis_answering() -> None:
    breaker = CacheBreaker(Probe(), failure_threshold=2, probe_interval=10)
    await bypassed(breaker, RedisConnectionError())

    async def remembered() -> None:
        raise LookupError("a remembered failure, read from Redis")

    with pytest.raises(LookupError):
        await breaker.call(remembered, budget=1, what="negative cache read")
    await bypassed(breaker, RedisConnectionError())
    assert not breaker.is_open  # the run was broken by the answer in between


def test_needs_repair_reads_the_whole_cause_chain() -> None:
    wrapped = RedisSearchError("Error while fetching idx index info")
    wrapped.__cause__ = ResponseError("Unknown index name")
    assert needs_repair(wrapped)
    assert not needs_repair(RedisConnectionError("Connection refused"))
    assert not needs_repair(ResponseError("OOM command not allowed when used memory > 'maxmemory'"))
