"""Commands packed once and pipelined on one connection (cache/wire.py) against a real Redis
Stack: the same replies as redis-py's execute_command, its errors, replies kept in step when a
caller is cut short, and a dead connection detected and replaced."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.cache import wire
from app.cache.breaker import CacheBreaker
from app.cache.errors import CacheBypassed
from app.cache.wire import PackedScript, command, execute_packed, pack, release_kept

pytestmark = pytest.mark.integration


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


def packed(*args: str | int | bytes) -> bytes:
    """A whole command, its last argument as the tail (as the KNN search sends its vector)."""
    last = args[-1]
    tail = last if isinstance(last, bytes) else str(last).encode()
    return command(pack(*args[:-1]), len(args) - 1, tail)


def test_pack_writes_resp() -> None:
    assert pack("SET", 1, b"\x00\r\n") == b"$3\r\nSET\r\n$1\r\n1\r\n$3\r\n\x00\r\n\r\n"
    assert command(pack("GET"), 1, b"k") == b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"


async def test_replies_are_execute_commands(redis: Redis) -> None:
    blob = bytes(range(256)) * 3  # every byte value, CR LF included
    await redis.delete("wire:h")
    assert await execute_packed(redis, packed("HSET", "wire:h", "f", blob)) == 1
    reply = await execute_packed(redis, packed("HMGET", "wire:h", "f", "missing"))
    assert reply == await redis.execute_command("HMGET", "wire:h", "f", "missing")
    assert reply == [blob, None]
    # Many in a row on the pool's connections: each reply is its own command's.
    replies = await asyncio.gather(
        *(execute_packed(redis, packed("ECHO", f"m{i}")) for i in range(50))
    )
    assert replies == [f"m{i}".encode() for i in range(50)]


async def test_an_error_reply_raises_and_the_connection_stays_usable(redis: Redis) -> None:
    with pytest.raises(ResponseError, match=r"no such index|Unknown index"):
        await execute_packed(redis, packed("FT.SEARCH", "wire-missing-index", "*"))
    assert await execute_packed(redis, packed("ECHO", "after")) == b"after"


async def test_a_cancelled_callers_late_reply_is_dropped_in_step(redis: Redis) -> None:
    # BLPOP on an empty list: the reply comes only after its 1 s timeout, past the cut.
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await execute_packed(redis, packed("BLPOP", "wire:empty", 1))
    # Its late reply (nil, after 1 s) must not be read as the next command's: the next one
    # waits its turn on the connection and gets its own.
    assert await execute_packed(redis, packed("ECHO", "next")) == b"next"
    await asyncio.sleep(0.1)
    assert await execute_packed(redis, packed("ECHO", "later")) == b"later"


async def test_concurrent_commands_share_one_connection_and_one_send(redis: Redis) -> None:
    before = (await redis.info("stats"))["total_net_input_bytes"]
    replies = await asyncio.gather(
        *(execute_packed(redis, packed("ECHO", f"c{i}")) for i in range(100))
    )
    assert replies == [f"c{i}".encode() for i in range(100)]
    assert (await redis.info("stats"))["total_net_input_bytes"] > before
    pipeline = wire._pipelines[redis.connection_pool]
    connection = pipeline._connection
    assert connection is not None
    # One connection carried them all: the pool handed out no other.
    assert redis.connection_pool._in_use_connections == {connection}
    clients = await redis.client_list()
    assert sum(1 for c in clients if c["cmd"] == "echo") == 1


async def test_a_packed_script_runs_and_is_loaded_again_after_a_flush(redis: Redis) -> None:
    script = PackedScript(redis, "return {KEYS[1], ARGV[1], #KEYS, #ARGV}")
    assert await script(["k"], [b"\x00v"]) == [b"k", b"\x00v", 1, 1]
    await redis.script_flush()
    assert await script(["a", "b"], ["x"]) == [b"a", b"x", 2, 1]
    assert await script(["only"], []) == [b"only"]  # Lua's reply stops at the first nil


async def test_a_connection_closed_by_redis_is_not_sent_on(redis: Redis) -> None:
    await asyncio.gather(*(execute_packed(redis, packed("ECHO", f"k{i}")) for i in range(8)))
    first = wire._pipelines[redis.connection_pool]._connection
    assert first is not None
    # Redis closes it (as a restart would): it is found closed before use, not sent on.
    assert await redis.client_kill_filter(_type="normal", skipme=True) >= 1
    await asyncio.sleep(0.1)  # the event loop sees its EOF
    replies = await asyncio.gather(
        *(execute_packed(redis, packed("ECHO", f"after{i}")) for i in range(8))
    )
    assert replies == [f"after{i}".encode() for i in range(8)]
    assert await execute_packed(redis, packed("ECHO", "alone")) == b"alone"


async def test_the_kept_connection_goes_back_to_the_pool(redis: Redis) -> None:
    await execute_packed(redis, packed("ECHO", "x"))
    pool = redis.connection_pool
    kept = wire._pipelines[pool]._connection
    assert kept is not None
    await release_kept(redis)
    assert wire._pipelines[pool]._connection is None
    assert kept in pool._available_connections
    # The pool's idle connections can be dropped (the breaker's probe does) and all still works.
    await pool.disconnect(inuse_connections=False)
    assert await execute_packed(redis, packed("ECHO", "y")) == b"y"


async def test_released_in_flight_those_fail_and_the_next_goes_on_a_new_connection(
    redis: Redis,
) -> None:
    # The BLPOP's reply is 2 s away: bounds below leave room for a loaded machine's stalls
    # (a 0.5 s one failed a CI run) while still telling a cut from a wait for it.
    waiting = asyncio.create_task(execute_packed(redis, packed("BLPOP", "wire:empty", "2")))
    await asyncio.sleep(0.05)
    first = wire._pipelines[redis.connection_pool]._connection
    await release_kept(redis)
    with pytest.raises(RedisConnectionError, match="released"):
        await waiting
    started = time.monotonic()
    assert await execute_packed(redis, packed("ECHO", "after")) == b"after"
    assert time.monotonic() - started < 1.2  # not queued behind the released BLPOP
    assert wire._pipelines[redis.connection_pool]._connection is not None
    assert first is not None


async def test_a_read_is_cut_by_a_breaker_budget_and_a_dead_connection_by_the_socket_timeout(
    redis_url: str,
) -> None:
    # Replies 1.5 s and 4 s away, a 2 s socket timeout: the bounds below leave room for a
    # loaded machine's stalls (a 0.5 s one failed a CI run with 0.4 s and 0.8 s here).
    client = Redis.from_url(redis_url, socket_timeout=2.0)
    breaker = CacheBreaker(client.ping, failure_threshold=100)
    try:
        # The budget cuts the caller (bypassed) while its reply, 1.5 s away, is still due: the
        # next command waits behind it on the connection and gets its own reply.
        started = time.monotonic()
        slow = packed("BLPOP", "wire:empty", "1.5")
        with pytest.raises(CacheBypassed, match="did not answer in time"):
            await breaker.call(lambda: execute_packed(client, slow), budget=0.1, what="read")
        assert time.monotonic() - started < 1.2
        assert await execute_packed(client, packed("ECHO", "next")) == b"next"
        # A reply later than the socket timeout: the connection is dead. The command waiting
        # for it and the one queued behind it fail, whatever the caller's budget.
        blpop = packed("BLPOP", "wire:empty", 4)  # its reply comes after 4 s
        sent = time.monotonic()
        late = asyncio.create_task(
            breaker.call(lambda: execute_packed(client, blpop), budget=5.0, what="read")
        )
        await asyncio.sleep(0.05)
        behind = asyncio.create_task(execute_packed(client, packed("ECHO", "behind")))
        with pytest.raises(RedisTimeoutError, match="Timeout reading"):
            await late
        with pytest.raises(RedisTimeoutError, match="Timeout reading"):
            await behind
        assert time.monotonic() - sent < 3.6  # cut by the 2 s timeout, before the reply
        # A new connection serves what comes next.
        assert await execute_packed(client, packed("ECHO", "later")) == b"later"
    finally:
        await client.aclose()


async def test_a_busy_connection_outlives_its_socket_timeout_while_replies_come(
    redis_url: str,
) -> None:
    # Two callers keep a 0.1 s BLPOP in flight on the one connection for 14 replies in a row
    # (Redis runs them one after the other): ~1.4 s with a reply every 0.1 s, over four 0.3 s
    # socket timeouts. The watchdog sees replies coming and never closes it.
    client = Redis.from_url(redis_url, socket_timeout=0.3)
    try:
        await execute_packed(client, packed("ECHO", "warm"))
        connection = wire._pipelines[client.connection_pool]._connection
        slow = packed("BLPOP", "wire:empty", "0.1")

        async def caller(delay: float) -> int:
            await asyncio.sleep(delay)
            for _ in range(7):
                assert await execute_packed(client, slow) is None
            return 7

        started = time.monotonic()
        assert sum(await asyncio.gather(caller(0), caller(0.05))) == 14
        assert time.monotonic() - started > 1.2  # the replies did come one by one
        assert wire._pipelines[client.connection_pool]._connection is connection
    finally:
        await client.aclose()
