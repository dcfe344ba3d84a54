"""SingleFlight against a real Redis: one lead per burst, in one process and across two."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from redis.asyncio import Redis

from app.cache import flight as flight_module
from app.cache.flight import FlightResult, FlightTimeout, SingleFlight
from app.errors import CacheUnavailable, UpstreamError, UpstreamTimeout
from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration

KEY = "0123456789abcdef0123456789abcdef"

MakeFlight = Callable[..., Awaitable[SingleFlight]]


class Upstream:
    """A provider and its cache, kept in Redis: `lead` calls it and stores, `follow` reads."""

    def __init__(
        self,
        redis: Redis,
        *,
        delay: float = 0.1,
        failures: int = 0,
        remember: bool = False,
        gate: asyncio.Event | None = None,
    ) -> None:
        self.redis = redis
        self.delay = delay
        self.failures = failures  # the first N calls fail
        self.remember = remember  # ... and leave a remembered failure behind
        self.gate = gate  # when set, a call finishes only once the gate opens
        self.calls = 0
        self.follows = 0
        self.entered = asyncio.Event()

    async def lead(self) -> str:
        self.calls += 1
        call = self.calls
        self.entered.set()
        await asyncio.sleep(self.delay)
        if self.gate is not None:
            await self.gate.wait()
        if call <= self.failures:
            if self.remember:
                await self.redis.set(f"failed:{KEY}", "429 storm", px=10_000)
            raise UpstreamError(f"call {call} failed")
        answer = f"answer from call {call}"
        await self.redis.set(f"entry:{KEY}", answer, px=10_000)
        return answer

    async def follow(self) -> str | None:
        self.follows += 1
        failed, entry = await self.redis.mget(f"failed:{KEY}", f"entry:{KEY}")
        if failed is not None:
            raise UpstreamError(f"remembered: {failed.decode()}")
        return None if entry is None else entry.decode()


@pytest.fixture
async def clients(redis_url: str) -> AsyncIterator[Callable[..., Redis]]:
    """New Redis clients on the test server (one per simulated process), closed afterwards."""
    made: list[Redis] = []

    def make(url: str = redis_url) -> Redis:
        client = Redis.from_url(url, socket_connect_timeout=1.0)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.aclose()


@pytest.fixture
async def make_flight(clients: Callable[..., Redis]) -> AsyncIterator[MakeFlight]:
    """A started SingleFlight on its own client (a simulated process); closed afterwards."""
    made: list[SingleFlight] = []

    async def make(
        *, start: bool = True, url: str | None = None, lock_ttl: float = 30.0
    ) -> SingleFlight:
        sf = SingleFlight(clients() if url is None else clients(url), lock_ttl=lock_ttl)
        made.append(sf)
        if start:
            await sf.start()
        return sf

    yield make
    for sf in made:
        await sf.aclose()


def in_(seconds: float) -> float:
    return asyncio.get_running_loop().time() + seconds


async def burst(
    sf: SingleFlight, upstream: Upstream, n: int, *, deadline: float = 3.0
) -> list[FlightResult[str] | BaseException]:
    """n concurrent identical runs on one instance."""
    return await asyncio.gather(
        *(sf.run(KEY, upstream.lead, upstream.follow, deadline=in_(deadline)) for _ in range(n)),
        return_exceptions=True,
    )


async def together(
    *bursts: Awaitable[list[FlightResult[str] | BaseException]],
) -> list[FlightResult[str] | BaseException]:
    """Bursts on several instances at once; their results in one list."""
    return [r for batch in await asyncio.gather(*bursts) for r in batch]


def values(results: list[FlightResult[str] | BaseException]) -> list[str]:
    return [r.value for r in results if isinstance(r, FlightResult)]


def waited(results: list[FlightResult[str] | BaseException]) -> int:
    return sum(1 for r in results if isinstance(r, FlightResult) and r.waited)


async def test_fifty_concurrent_in_one_process_make_one_lead(
    make_flight: MakeFlight, clients: Callable[..., Redis]
) -> None:
    sf = await make_flight()
    upstream = Upstream(clients())
    results = await burst(sf, upstream, 50)
    assert upstream.calls == 1
    assert values(results) == ["answer from call 1"] * 50
    assert waited(results) == 49
    # The 49 shared the local leader's future: the only cache read is the leader's recheck.
    assert upstream.follows == 1
    assert await clients().exists(sf.lock_key(KEY)) == 0  # released


async def test_two_processes_twenty_five_each_make_one_lead(
    make_flight: MakeFlight, clients: Callable[..., Redis]
) -> None:
    first, second = await make_flight(), await make_flight()
    upstream = Upstream(clients(), delay=0.2)
    results = await together(burst(first, upstream, 25), burst(second, upstream, 25))
    assert upstream.calls == 1
    assert values(results) == ["answer from call 1"] * 50
    assert waited(results) == 49


async def test_waiters_in_another_process_are_woken_by_the_notification(
    make_flight: MakeFlight, clients: Callable[..., Redis], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Polling so slow that only the notification can answer the waiter in time.
    monkeypatch.setattr(flight_module, "_POLL_FIRST", 5.0)
    monkeypatch.setattr(flight_module, "_POLL_MAX", 5.0)
    leader_side, waiter_side = await make_flight(), await make_flight()
    upstream = Upstream(clients(), delay=0.3)
    leading = asyncio.create_task(
        leader_side.run(KEY, upstream.lead, upstream.follow, deadline=in_(3))
    )
    await upstream.entered.wait()
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await waiter_side.run(KEY, upstream.lead, upstream.follow, deadline=in_(2))
    assert loop.time() - started < 1.0
    assert result == FlightResult("answer from call 1", waited=True)
    assert (await leading).waited is False
    assert upstream.calls == 1


async def test_without_notifications_waiters_poll(
    make_flight: MakeFlight, clients: Callable[..., Redis]
) -> None:
    leader_side, deaf = await make_flight(), await make_flight(start=False)
    upstream = Upstream(clients(), delay=0.15)
    results = await together(
        burst(leader_side, upstream, 1), burst(deaf, upstream, 5, deadline=2.0)
    )
    assert upstream.calls == 1
    assert values(results) == ["answer from call 1"] * 6


async def test_a_remembered_failure_reaches_every_waiter(
    make_flight: MakeFlight, clients: Callable[..., Redis]
) -> None:
    first, second = await make_flight(), await make_flight()
    upstream = Upstream(clients(), failures=99, remember=True)
    async with asyncio.timeout(3):  # a hang fails here
        results = await together(burst(first, upstream, 10), burst(second, upstream, 10))
    assert upstream.calls == 1
    assert all(isinstance(r, UpstreamError) for r in results), results
    messages = sorted(str(r) for r in results)
    assert messages == ["call 1 failed"] + ["remembered: 429 storm"] * 19


async def test_a_failed_leader_without_memory_is_taken_over(
    make_flight: MakeFlight, clients: Callable[..., Redis]
) -> None:
    first, second = await make_flight(), await make_flight()
    upstream = Upstream(clients(), failures=1, remember=False)
    async with asyncio.timeout(3):
        results = await together(burst(first, upstream, 10), burst(second, upstream, 10))
    assert upstream.calls == 2
    errors = [r for r in results if isinstance(r, BaseException)]
    assert [str(e) for e in errors] == ["call 1 failed"]  # the failed leader's own caller
    assert values(results) == ["answer from call 2"] * 19
    assert sum(1 for r in results if isinstance(r, FlightResult) and not r.waited) == 1


async def test_nobody_waits_past_the_deadline(
    make_flight: MakeFlight, clients: Callable[..., Redis]
) -> None:
    first, second = await make_flight(), await make_flight()
    gate = asyncio.Event()
    upstream = Upstream(clients(), delay=0, gate=gate)
    leading = asyncio.create_task(first.run(KEY, upstream.lead, upstream.follow, deadline=in_(5)))
    await upstream.entered.wait()
    loop = asyncio.get_running_loop()
    started = loop.time()
    results = await together(
        burst(first, upstream, 5, deadline=0.3), burst(second, upstream, 5, deadline=0.3)
    )
    elapsed = loop.time() - started
    assert elapsed >= 0.29  # each waited until its own deadline...
    assert elapsed < 4  # ...and not for the leader, which is held for 5 s
    assert all(isinstance(r, FlightTimeout) for r in results), results
    error = results[0]
    assert isinstance(error, UpstreamTimeout)
    assert error.status_code == 504
    assert "for an identical request in flight" in error.message
    gate.set()
    assert await leading == FlightResult("answer from call 1", waited=False)
    assert upstream.calls == 1


async def test_the_lock_is_released_only_by_its_owner(
    make_flight: MakeFlight, clients: Callable[..., Redis]
) -> None:
    sf = await make_flight()
    redis = clients()
    upstream = Upstream(redis, delay=0)
    lock = sf.lock_key(KEY)

    async def lead_while_the_lock_changes_hands() -> str:
        # As if our lock had expired and another instance had taken it over.
        assert await redis.get(lock) is not None
        await redis.set(lock, "someone else", px=10_000)
        return await upstream.lead()

    result = await sf.run(KEY, lead_while_the_lock_changes_hands, upstream.follow, deadline=in_(1))
    assert result == FlightResult("answer from call 1", waited=False)
    assert await redis.get(lock) == b"someone else"


async def test_a_long_lead_keeps_its_lock(
    make_flight: MakeFlight, clients: Callable[..., Redis]
) -> None:
    first, second = await make_flight(lock_ttl=0.1), await make_flight(lock_ttl=0.1)
    upstream = Upstream(clients(), delay=0.4)  # four lock TTLs
    results = await together(burst(first, upstream, 3), burst(second, upstream, 3))
    assert upstream.calls == 1
    assert values(results) == ["answer from call 1"] * 6


async def test_a_crashed_leaders_lock_expires_and_a_waiter_takes_over(
    make_flight: MakeFlight, clients: Callable[..., Redis]
) -> None:
    sf = await make_flight(lock_ttl=5.0)
    redis = clients()
    await redis.set(sf.lock_key(KEY), "crashed process", px=200)
    upstream = Upstream(redis, delay=0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await sf.run(KEY, upstream.lead, upstream.follow, deadline=in_(2))
    assert loop.time() - started >= 0.15  # it waited for the dead lock to expire (200 ms)
    assert result == FlightResult("answer from call 1", waited=False)


async def test_with_redis_down_lead_is_called_directly(
    make_flight: MakeFlight, clients: Callable[..., Redis]
) -> None:
    sf = await make_flight(url=f"redis://127.0.0.1:{free_port()}")  # start() must not fail
    calls = 0

    async def lead() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return "direct"

    async def follow() -> str | None:
        raise CacheUnavailable("Redis failed: ConnectionError")

    async with asyncio.timeout(3):
        results = await asyncio.gather(
            *(sf.run(KEY, lead, follow, deadline=in_(1)) for _ in range(5))
        )
    assert calls == 1  # coalescing inside the process does not need Redis
    assert [r.value for r in results] == ["direct"] * 5
    assert sum(1 for r in results if not r.waited) == 1
