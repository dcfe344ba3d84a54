"""Commands packed once, sent as bytes: for the hot path's fixed commands.

redis-py packs every argument of every call in Python (`pack_command`, an encoder call per
argument) and sends through `asyncio.wait_for`, a task of its own per command. For the KNN
search (some 35 arguments, all but the vector the same for a scope) that was ~16% of the event
loop's CPU under load (bench/profile-semantic.md). Here the fixed part is packed once (RESP
bytes, cached by the caller) and the command goes out in one write on a pooled connection;
the reply is read by redis-py's parser as usual, with its socket timeout and its errors. The
hot path's Lua scripts (the alias-aware lookup, the alias writes) go the same way.
"""

from __future__ import annotations

import asyncio
import math
import weakref
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import Connection, ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

from app.breaker import cut_before


def pack(*args: str | int | bytes) -> bytes:
    """RESP bytes of a command's arguments (a command's head: the count is the caller's)."""
    out = []
    for arg in args:
        raw = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%b\r\n" % (len(raw), raw))
    return b"".join(out)


def command(head: bytes, count: int, *tail: bytes) -> bytes:
    """A whole command: `head` (packed arguments, `count` of them) and `tail`'s bytes."""
    parts = [b"*%d\r\n" % (count + len(tail)), head]
    for raw in tail:
        parts.append(b"$%d\r\n%b\r\n" % (len(raw), raw))
    return b"".join(parts)


# Connections execute_packed keeps between its calls, per client (at most this many): taken
# from the pool and kept, they skip the pool's lock, its observability hooks and its event
# dispatch on every command (~20 µs of CPU per exact hit). The pool still counts them in use,
# so its disconnect(inuse_connections=True) and aclose reach them.
IDLE_KEPT = 64
_idle: weakref.WeakKeyDictionary[ConnectionPool, list[Connection]] = weakref.WeakKeyDictionary()


async def execute_packed(redis: Redis, packed: bytes) -> Any:
    """Send a packed command on a pooled connection and return its reply, as redis-py's
    execute_command would (no response callback; a ResponseError raised). A failed or
    cancelled exchange drops the connection: its reply may still come."""
    pool = redis.connection_pool
    idle = _idle.get(pool)
    if idle is None:
        idle = _idle[pool] = []
    connection = await _take(pool, idle)
    done = False
    try:
        writer = connection._writer
        if writer is None:
            raise RedisConnectionError("connection closed")
        try:
            writer.write(packed)
            await writer.drain()
        except OSError as exc:
            await connection.disconnect(nowait=True)
            raise RedisConnectionError(f"Error while writing to socket: {exc}") from exc
        except BaseException:
            await connection.disconnect(nowait=True)
            raise
        # Disconnects on its own failures (timeout, OSError, cancellation). Its socket timeout
        # (an asyncio.timeout per read) is left out when a breaker's budget cuts the read first.
        timeout = connection.socket_timeout
        if timeout and cut_before(asyncio.get_running_loop().time() + timeout):
            reply = await connection.read_response(timeout=math.inf)
        else:
            reply = await connection.read_response()
        done = True
        return reply
    finally:
        if done and len(idle) < IDLE_KEPT:
            idle.append(connection)
        else:
            await pool.release(connection)


async def _take(pool: ConnectionPool, idle: list[Connection]) -> Connection:
    """A kept connection still fit to send on (connected, nothing unread, not closed by
    Redis), else one from the pool. An unfit one is closed before it goes back: the pool
    reconnects a closed connection, but hands out a connected one as it is (redis-py skips
    its own unread-data check while maintenance notifications are on, its default)."""
    while idle:
        connection = idle.pop()
        try:
            if connection.is_connected and not await connection.can_read():
                return connection
        except (RedisConnectionError, OSError):
            pass
        await connection.disconnect(nowait=True)
        await pool.release(connection)
    return await pool.get_connection()  # type: ignore[no-untyped-call,no-any-return]


async def release_kept(redis: Redis) -> None:
    """Give the connections execute_packed keeps back to the pool (the breaker's probe, before
    it drops the pool's idle connections: some may be dead after an outage)."""
    idle = _idle.get(redis.connection_pool, [])
    while idle:
        await redis.connection_pool.release(idle.pop())


class PackedScript:
    """A Lua script run by EVALSHA through `execute_packed`, loaded again on NOSCRIPT (Redis
    restarted or its scripts flushed), as redis-py's Script is."""

    def __init__(self, redis: Redis, source: str) -> None:
        self._redis = redis
        self._script = redis.register_script(source)
        self._head = pack("EVALSHA", self._script.sha)

    async def __call__(self, keys: Sequence[str], args: Sequence[str | bytes]) -> Any:
        """The script's reply for these keys and arguments."""
        tail = [key.encode() for key in keys]
        tail += [arg if isinstance(arg, bytes) else arg.encode() for arg in args]
        packed = command(self._head + pack(len(keys)), 3, *tail)
        try:
            return await execute_packed(self._redis, packed)
        except NoScriptError:
            await self._redis.script_load(self._script.script)
            return await execute_packed(self._redis, packed)
