"""Commands packed once and sent as bytes (cache/wire.py) against a real Redis Stack: the same
replies as redis-py's execute_command, its errors, and a connection dropped when cut short."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
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


async def test_a_cancelled_exchange_drops_its_connection(redis: Redis) -> None:
    # BLPOP on an empty list: the reply comes only after its 1 s timeout, past the cut.
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await execute_packed(redis, packed("BLPOP", "wire:empty", 1))
    # Its late reply (nil, after 1 s) must not be read as the next command's: that connection
    # was closed rather than given back to the pool as it was.
    assert await execute_packed(redis, packed("ECHO", "next")) == b"next"
    await asyncio.sleep(1.1)
    assert await execute_packed(redis, packed("ECHO", "later")) == b"later"


async def test_a_packed_script_runs_and_is_loaded_again_after_a_flush(redis: Redis) -> None:
    script = PackedScript(redis, "return {KEYS[1], ARGV[1], #KEYS, #ARGV}")
    assert await script(["k"], [b"\x00v"]) == [b"k", b"\x00v", 1, 1]
    await redis.script_flush()
    assert await script(["a", "b"], ["x"]) == [b"a", b"x", 2, 1]
    assert await script(["only"], []) == [b"only"]  # Lua's reply stops at the first nil


async def test_connections_are_kept_and_a_closed_one_is_not_sent_on(redis: Redis) -> None:
    await asyncio.gather(*(execute_packed(redis, packed("ECHO", f"k{i}")) for i in range(8)))
    kept = wire._idle[redis.connection_pool]
    assert 1 <= len(kept) <= 8
    # Redis closes them (as a restart would): each is found closed before use, not sent on.
    assert await redis.client_kill_filter(_type="normal", skipme=True) >= len(kept)
    await asyncio.sleep(0.1)  # the event loop sees their EOF
    replies = await asyncio.gather(
        *(execute_packed(redis, packed("ECHO", f"after{i}")) for i in range(8))
    )
    assert replies == [f"after{i}".encode() for i in range(8)]


async def test_kept_connections_go_back_to_the_pool(redis: Redis) -> None:
    await execute_packed(redis, packed("ECHO", "x"))
    pool = redis.connection_pool
    kept = list(wire._idle[pool])
    assert kept
    await release_kept(redis)
    assert wire._idle[pool] == []
    assert all(c in pool._available_connections for c in kept)
    # The pool's idle connections can be dropped (the breaker's probe does) and all still works.
    await pool.disconnect(inuse_connections=False)
    assert await execute_packed(redis, packed("ECHO", "y")) == b"y"


async def test_a_read_under_a_breaker_budget_is_cut_by_it_or_by_the_socket_timeout(
    redis_url: str,
) -> None:
    client = Redis.from_url(redis_url, socket_timeout=0.3)
    breaker = CacheBreaker(client.ping, failure_threshold=100)
    blpop = packed("BLPOP", "wire:empty", 1)  # its reply comes after 1 s
    try:
        # The budget cuts first: the read runs without a socket timeout of its own, the call
        # is late (bypassed), and the connection is dropped, not handed its late reply.
        started = time.monotonic()
        with pytest.raises(CacheBypassed, match="did not answer in time"):
            await breaker.call(lambda: execute_packed(client, blpop), budget=0.1, what="read")
        assert time.monotonic() - started < 0.25
        assert await execute_packed(client, packed("ECHO", "next")) == b"next"
        # A budget past the socket timeout: the socket timeout cuts the read, as without one.
        with pytest.raises(RedisTimeoutError, match="Timeout reading"):
            await breaker.call(lambda: execute_packed(client, blpop), budget=5.0, what="read")

        # A task started inside a call is not cut with it: its read keeps the socket timeout.
        spawned: list[asyncio.Task[object]] = []

        async def spawn() -> None:
            spawned.append(asyncio.create_task(execute_packed(client, blpop)))

        await breaker.call(spawn, budget=0.2, what="spawn")
        with pytest.raises(RedisTimeoutError):
            await spawned[0]
        await asyncio.sleep(1.1)
        assert await execute_packed(client, packed("ECHO", "later")) == b"later"
    finally:
        await client.aclose()
