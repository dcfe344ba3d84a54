"""Commands packed once, sent as bytes, pipelined on one connection: for the hot path.

redis-py packs every argument of every call in Python (`pack_command`, an encoder call per
argument) and sends through `asyncio.wait_for`, a task of its own per command. For the KNN
search (some 35 arguments, all but the vector the same for a scope) that was ~16% of the event
loop's CPU under load (bench/profile-semantic.md). Here the fixed part is packed once (RESP
bytes, cached by the caller); the reply is read by redis-py's parser, with its errors. The hot
path's Lua scripts (the alias-aware lookup, the alias writes) go the same way.

Auto-pipelining: every packed command of a client shares one connection. Commands that arrive
while others are in flight are written together at the end of the event loop's turn, in one
send, and their replies come back in order, usually several per read. Under load that turns a
send and a wake-up per command into one per batch, in this process and in Redis (at 16
concurrent callers: ~27 -> ~10 µs of this process's CPU per command, 1.6x the commands/s).
A caller cut short (a breaker's budget) leaves its reply to be read and dropped: the
connection stays in step and is kept. A connection whose next reply is later than the socket
timeout is dead: it is closed and every command in flight on it fails.
"""

from __future__ import annotations

import asyncio
import math
import weakref
from collections import deque
from collections.abc import Coroutine, Iterable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import Connection, ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


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


class Pipeline:
    """One connection of a pool, shared by every packed command sent on one event loop."""

    def __init__(self, pool: ConnectionPool, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._pool = weakref.ref(pool)  # the module's table is keyed by the pool, weakly
        self._connection: Connection | None = None
        self._connecting = False
        self._pending: list[tuple[bytes, asyncio.Future[Any]]] = []
        self._flush_due = False
        self._in_flight: deque[asyncio.Future[Any]] = deque()
        self._reader: asyncio.Task[None] | None = None
        self._replies = 0  # replies read so far: the watchdog's measure of progress
        self._watchdog: asyncio.TimerHandle | None = None
        self._stalled = False
        self._tasks: set[asyncio.Task[None]] = set()  # held: the loop keeps only weak ones

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        """Queue a command; its reply (or its error) completes the future."""
        future = self.loop.create_future()
        connection = self._connection
        if (
            connection is not None
            and not self._pending
            and not self._in_flight
            and self._usable(connection)
        ):
            # Nothing to wait for: out at once (a lone caller pays no extra turn of the loop).
            self._write(connection, [packed], [future])
            return future
        self._pending.append((packed, future))
        if not self._flush_due:
            self._flush_due = True
            self.loop.call_soon(self._flush)
        return future

    async def release(self) -> None:
        """Give the connection back to the pool; whatever is in flight on it fails."""
        connection = self._connection
        if connection is not None:
            self._detach(RedisConnectionError("connection released"))
            await self._drop(connection)

    def _detach(self, error: RedisError) -> None:
        """Leave the connection: fail what is in flight on it and stop its reader. What is
        sent from now on goes out on another connection, with a queue and reader of its own."""
        in_flight, self._in_flight = self._in_flight, deque()
        reader, self._reader = self._reader, None
        self._connection = None
        _fail(in_flight, error)
        in_flight.clear()  # a reader still on it stops
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _usable(self, connection: Connection) -> bool:
        """Connected, and not closed by Redis while idle (its EOF seen); else dropped."""
        reader = connection._reader
        if connection._writer is not None and reader is not None and not reader.at_eof():
            return True
        self._connection = None
        self._spawn(self._drop(connection))
        return False

    def _flush(self) -> None:
        """Write every queued command in one send (connecting first if need be)."""
        self._flush_due = False
        connection = self._connection
        if connection is not None and not self._in_flight and not self._usable(connection):
            connection = None
        if connection is None:
            if not self._connecting:
                self._connecting = True
                self._spawn(self._connect())
            return
        batch, self._pending = self._pending, []
        live = [(packed, future) for packed, future in batch if not future.done()]
        if live:
            self._write(connection, [p for p, _ in live], [f for _, f in live])

    def _write(
        self, connection: Connection, packets: list[bytes], futures: list[asyncio.Future[Any]]
    ) -> None:
        """Send and put the futures in line for their replies (no drain: commands are small
        and bounded by the requests in flight)."""
        writer = connection._writer
        try:
            if writer is None:
                raise OSError("connection closed")
            writer.write(packets[0] if len(packets) == 1 else b"".join(packets))
        except Exception as exc:  # the transport is gone: these never went out
            error = RedisConnectionError(f"Error while writing to socket: {exc}")
            _fail(futures, error)
            self._detach(error)
            self._spawn(self._drop(connection))
            return
        self._in_flight.extend(futures)
        if self._reader is None:
            self._reader = self.loop.create_task(self._read(connection))
            timeout = connection.socket_timeout
            if timeout and self._watchdog is None:
                self._watchdog = self.loop.call_later(timeout, self._watch, self._replies)

    async def _connect(self) -> None:
        """Take a connection from the pool, then send what waited for it."""
        pool = self._pool()
        try:
            if pool is None:
                raise RedisConnectionError("the connection pool is gone")
            connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        except Exception as exc:
            batch, self._pending = self._pending, []
            _fail([future for _, future in batch], _as_redis_error(exc))
            return
        finally:
            self._connecting = False
        self._connection = connection
        self._flush()

    async def _read(self, connection: Connection) -> None:
        """Read replies in order while commands are in flight; a failure fails them all."""
        in_flight = self._in_flight
        try:
            while in_flight:
                try:
                    reply: Any = await connection.read_response(timeout=math.inf)
                except ResponseError as exc:  # a whole reply: the connection is in step
                    reply = exc
                self._replies += 1
                future = in_flight.popleft()
                if future.done():
                    continue  # its caller gave up (a breaker's budget): the reply is dropped
                if isinstance(reply, ResponseError):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except BaseException as exc:  # every failure ends the connection
            stalled, self._stalled = self._stalled, False
            if self._connection is not connection:
                return  # left already (released): its commands were failed then
            if stalled:
                error: RedisError = RedisTimeoutError(
                    f"Timeout reading from {connection._host_error()}"
                )
            else:
                error = _as_redis_error(exc)
            self._detach(error)
            await self._drop(connection)
        finally:
            if self._reader is asyncio.current_task():
                self._reader = None
                if self._watchdog is not None:
                    self._watchdog.cancel()
                    self._watchdog = None

    def _watch(self, replies_then: int) -> None:
        """No reply for a whole socket timeout while some are due: the connection is dead
        (detected one to two timeouts after its last reply)."""
        self._watchdog = None
        reader, connection = self._reader, self._connection
        if reader is None or connection is None:
            return
        if self._replies != replies_then:
            timeout = connection.socket_timeout or 1.0
            self._watchdog = self.loop.call_later(timeout, self._watch, self._replies)
            return
        self._stalled = True
        reader.cancel()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drop(self, connection: Connection) -> None:
        """Close a connection and hand it back to its pool (which reconnects it on use)."""
        await connection.disconnect(nowait=True)
        pool = self._pool()
        if pool is not None:
            await pool.release(connection)


def _fail(futures: Iterable[asyncio.Future[Any]], error: RedisError) -> None:
    """Fail the futures not done yet, each with an error of its own."""
    for future in futures:
        if not future.done():
            future.set_exception(type(error)(*error.args))


def _as_redis_error(exc: BaseException) -> RedisError:
    """What a caller sees when the connection under its command failed."""
    if isinstance(exc, RedisError):
        return exc
    if isinstance(exc, asyncio.CancelledError):
        return RedisConnectionError("connection dropped")
    return RedisConnectionError(f"{type(exc).__name__}: {exc}")


_pipelines: weakref.WeakKeyDictionary[ConnectionPool, Pipeline] = weakref.WeakKeyDictionary()


async def execute_packed(redis: Redis, packed: bytes) -> Any:
    """Send a packed command on the client's pipelined connection and return its reply, as
    redis-py's execute_command would (no response callback; a ResponseError raised)."""
    pool = redis.connection_pool
    loop = asyncio.get_running_loop()
    pipeline = _pipelines.get(pool)
    if pipeline is None or pipeline.loop is not loop:
        pipeline = _pipelines[pool] = Pipeline(pool, loop)
    return await pipeline.send(packed)


async def release_kept(redis: Redis) -> None:
    """Give the connection execute_packed keeps back to the pool (the breaker's probe, before
    it drops the pool's idle connections: it may be dead after an outage)."""
    pipeline = _pipelines.get(redis.connection_pool)
    if pipeline is not None:
        await pipeline.release()


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
