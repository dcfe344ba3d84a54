"""Request coalescing (single-flight): concurrent identical misses make one upstream call.

In one process, concurrent `run`s with the same key share one local future: the first (the
local leader) does the work below, the others wait for its result without touching Redis
(`FlightResult.shared`). A leader's failure of a kind the caller names (`share_errors`: for
the cache, any error answered to the client, a provider's 400 included) reaches them too, as
SharedFailure, rather than making each call the provider in turn; any other (a cancelled
client, a bug) lets them look for themselves.

Across processes, the local leader takes a short Redis lock (`SET prefix+key token NX PX`).
The holder checks the cache once more (`follow`: the answer may have landed between the
caller's lookup and the lock), then calls `lead`, then releases the lock only if it still
holds it and publishes a notification on the channel named like the lock key, success or
failure, in one Lua script. A process that does not get the lock waits: woken by that
notification (one pattern subscription per process, dispatched to its local waiters) or, if
it is lost, by polling with backoff. Each wake calls `follow`: a value answers the waiter; an
exception (a remembered failure) reaches it; nothing while the lock is gone means the leader
failed without leaving an answer, and the waiter takes the lock and leads itself.

The lock's TTL bounds how long a crashed leader blocks the others; a live leader renews it
every third of the TTL, so a long upstream call keeps it. Nobody waits past its deadline
(`FlightTimeout`, a 504). Coalescing is an optimisation: when Redis fails, `lead` is called
directly rather than failing the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.cache.keys import text
from app.errors import CacheUnavailable, UpstreamTimeout

log = logging.getLogger("sentinel.cache")

T = TypeVar("T")

# A waiter re-checks after 10 ms, doubling to 200 ms, in case a notification was lost.
_POLL_FIRST = 0.01
_POLL_MAX = 0.2
# The listener re-subscribes after a Redis failure, backing off to 5 s.
_RESUBSCRIBE_FIRST = 0.1
_RESUBSCRIBE_MAX = 5.0

# Delete the lock only if it is still ours (it may have expired and been taken over), and tell
# the waiters to look in any case. Returns 1 when the lock was ours.
_RELEASE = """
local held = 0
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  held = 1
end
redis.call('PUBLISH', ARGV[2], '')
return held
"""

# Extend the lock only if it is still ours. Returns 1 when it was.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


class FlightTimeout(UpstreamTimeout):
    """The identical request this one waited for did not finish before this one's deadline."""


class SharedFailure(Exception):
    """The local leader failed with `error`; raised to each caller that waited for it."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True, slots=True)
class FlightResult(Generic[T]):
    """What `run` answers: the value, whether it came from another caller's `lead`, and
    whether that caller was in this process (then `value` is its answer, as it was)."""

    value: T
    waited: bool
    shared: bool = False


class SingleFlight:
    """Coalesces concurrent calls with the same key, in this process and across processes."""

    def __init__(
        self, redis: Redis, *, prefix: str = "sentinel:flight:", lock_ttl: float = 30.0
    ) -> None:
        if lock_ttl <= 0:
            raise ValueError("lock_ttl must be positive")
        self._redis = redis
        self._prefix = prefix
        self._pattern = re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + "*"
        self._lock_ms = max(1, round(lock_ttl * 1000))
        self._release = redis.register_script(_RELEASE)
        self._renew = redis.register_script(_RENEW)
        # key -> the local leader's result; followers in this process wait on it.
        self._flights: dict[str, asyncio.Future[FlightResult[Any]]] = {}
        # key -> set when a notification for the key arrives (one waiter per key: the local leader).
        self._wakeups: dict[str, asyncio.Event] = {}
        self._listener: asyncio.Task[None] | None = None

    def lock_key(self, key: str) -> str:
        """The Redis key of the lock for `key` (also the name of its notification channel)."""
        return self._prefix + key

    async def start(self) -> None:
        """Subscribe to notifications in a background task, until aclose().

        Returns once subscribed, or after the first failed attempt (the task keeps trying;
        waiters poll meanwhile). Without start(), waiters only poll.
        """
        if self._listener is not None:
            return
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._listener = asyncio.create_task(self._listen(ready), name="sentinel-flight")
        await asyncio.wait({ready, self._listener}, return_when=asyncio.FIRST_COMPLETED)

    async def aclose(self) -> None:
        """Stop listening for notifications."""
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None

    async def run(
        self,
        key: str,
        lead: Callable[[], Awaitable[T]],
        follow: Callable[[], Awaitable[T | None]],
        *,
        deadline: float,
        share_errors: tuple[type[BaseException], ...] = (),
    ) -> FlightResult[T]:
        """`lead()` once for all concurrent callers with this key; the others get its answer.

        `lead` calls the provider and stores the answer; its exceptions reach its own caller.
        `follow` reads the cache: the answer, None when there is none yet, or raises a
        remembered failure (which then reaches the caller). `deadline` (loop.time()) bounds
        the waiting, not the caller's own `lead`: past it a waiter raises FlightTimeout. A
        local leader's exception that is one of `share_errors` reaches the callers waiting
        for it in this process as SharedFailure.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            flight = self._flights.get(key)
            if flight is None:
                return await self._lead_locally(
                    key, lead, follow, deadline, started, share_errors=share_errors
                )
            remaining = deadline - loop.time()
            if remaining > 0:
                await asyncio.wait({flight}, timeout=remaining)
            if not flight.done():
                raise _timeout(loop.time() - started)
            if not flight.cancelled():
                error = flight.exception()
                if error is not None:
                    raise SharedFailure(error)
                return FlightResult(flight.result().value, waited=True, shared=True)
            # The local leader failed, gave up or was cancelled. Whatever it left behind (an
            # answer, a remembered failure) answers us; if nothing, one of us leads next.
            value = await _follow(follow)
            if value is not None:
                return FlightResult(value, waited=True)

    async def _lead_locally(
        self,
        key: str,
        lead: Callable[[], Awaitable[T]],
        follow: Callable[[], Awaitable[T | None]],
        deadline: float,
        started: float,
        *,
        share_errors: tuple[type[BaseException], ...],
    ) -> FlightResult[T]:
        """Do the cross-process part for this process; share the result with local followers."""
        flight: asyncio.Future[FlightResult[Any]] = asyncio.get_running_loop().create_future()
        self._flights[key] = flight
        try:
            result = await self._across(key, lead, follow, deadline, started)
        except BaseException as exc:
            if share_errors and isinstance(exc, share_errors):
                flight.set_exception(exc)
                flight.exception()  # retrieved: no "never retrieved" report without followers
            else:
                flight.cancel()  # followers look for themselves (see run)
            raise
        finally:
            if self._flights.get(key) is flight:
                del self._flights[key]
        flight.set_result(result)
        return result

    async def _across(
        self,
        key: str,
        lead: Callable[[], Awaitable[T]],
        follow: Callable[[], Awaitable[T | None]],
        deadline: float,
        started: float,
    ) -> FlightResult[T]:
        """Lead under the Redis lock, or wait for whoever holds it and take over if it fails."""
        lock = self.lock_key(key)
        token = secrets.token_hex(16)
        try:
            answer = await self._queue(key, token, follow, deadline, started)
        except (RedisError, CacheUnavailable) as exc:
            log.warning("request coalescing skipped, Redis failed: %s", type(exc).__name__)
        else:
            return answer if answer is not None else await self._lead(lock, token, lead, follow)
        return FlightResult(await lead(), waited=False)

    async def _queue(
        self,
        key: str,
        token: str,
        follow: Callable[[], Awaitable[T | None]],
        deadline: float,
        started: float,
    ) -> FlightResult[T] | None:
        """Wait until another's answer is there (returned) or the lock is ours (None)."""
        loop = asyncio.get_running_loop()
        lock = self.lock_key(key)
        delay = _POLL_FIRST
        try:
            while True:
                # Armed before looking, so a notification sent while we look is not missed.
                wakeup = self._wakeups.setdefault(key, asyncio.Event())
                if delay > _POLL_FIRST:  # the first time round, the caller has just looked
                    value = await follow()
                    if value is not None:
                        return FlightResult(value, waited=True)
                if await self._redis.set(lock, token, nx=True, px=self._lock_ms):
                    return None
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise _timeout(loop.time() - started)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wakeup.wait(), min(delay, remaining))
                delay = min(delay * 2, _POLL_MAX)
        finally:
            self._wakeups.pop(key, None)

    async def _lead(
        self,
        lock: str,
        token: str,
        lead: Callable[[], Awaitable[T]],
        follow: Callable[[], Awaitable[T | None]],
    ) -> FlightResult[T]:
        """Holding the lock: look once more, else lead; then release and notify."""
        renewal = asyncio.create_task(self._keep(lock, token), name="sentinel-flight-renew")
        try:
            # Another leader may have stored the answer between the caller's lookup and our lock.
            value = await _follow(follow)
            if value is not None:
                return FlightResult(value, waited=True)
            return FlightResult(await lead(), waited=False)
        finally:
            renewal.cancel()
            try:
                await self._release(keys=[lock], args=[token, lock])
            except RedisError as exc:
                log.warning("flight lock not released (expires by itself): %s", type(exc).__name__)

    async def _keep(self, lock: str, token: str) -> None:
        """Renew the lock every third of its TTL while the leader runs."""
        interval = self._lock_ms / 3000
        while True:
            await asyncio.sleep(interval)
            try:
                held = await self._renew(keys=[lock], args=[token, self._lock_ms])
            except RedisError as exc:
                log.warning("flight lock not renewed: %s", type(exc).__name__)
                continue
            if not held:
                log.warning("flight lock lost to expiry; another instance may lead too")
                return

    async def _listen(self, ready: asyncio.Future[None]) -> None:
        """Dispatch notifications to local waiters; re-subscribe after Redis failures."""
        delay = _RESUBSCRIBE_FIRST
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.psubscribe(self._pattern)
                async for message in pubsub.listen():
                    if message["type"] == "pmessage":
                        self._wake(text(message["channel"])[len(self._prefix) :])
                    elif message["type"] == "psubscribe":
                        # Notifications sent while we were not subscribed are lost: look again.
                        for event in self._wakeups.values():
                            event.set()
                        self._wakeups.clear()
                        delay = _RESUBSCRIBE_FIRST
                        if not ready.done():
                            ready.set_result(None)
            except RedisError as exc:
                log.warning("flight notifications paused, waiters poll: %s", type(exc).__name__)
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            if not ready.done():
                ready.set_result(None)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RESUBSCRIBE_MAX)

    def _wake(self, key: str) -> None:
        event = self._wakeups.pop(key, None)
        if event is not None:
            event.set()


async def _follow(follow: Callable[[], Awaitable[T | None]]) -> T | None:
    """`follow()`, with Redis being unreachable counted as nothing found."""
    try:
        return await follow()
    except (RedisError, CacheUnavailable):
        return None


def _timeout(waited: float) -> FlightTimeout:
    return FlightTimeout(
        f"waited {waited:.1f} s for an identical request in flight; it did not finish "
        "before this request's deadline"
    )
