"""Redis failures become CacheUnavailable at the cache's edge, so callers never see redis-py.

redisvl wraps redis-py's errors in its own (RedisSearchError, not a RedisError), so both are
caught here; the original error stays reachable as the cause, for `needs_repair`.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from redis.exceptions import RedisError
from redisvl.exceptions import RedisVLError

from app.errors import CacheUnavailable

P = ParamSpec("P")
T = TypeVar("T")

# How RediSearch says an index is not there: "<name>: no such index" (FT.SEARCH),
# "Unknown index name" (FT.INFO), "No such index <name>" (newer versions).
_MISSING_INDEX = ("no such index", "unknown index")


class CacheBypassed(CacheUnavailable):
    """A cache operation was skipped or cut short; the request goes on without the cache."""


def redis_errors_as_unavailable(func: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Re-raise any Redis error (connection, timeout, reply, redisvl's) as CacheUnavailable."""

    @functools.wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await func(*args, **kwargs)
        except (RedisError, RedisVLError) as exc:
            raise CacheUnavailable(f"Redis failed: {_describe(exc)}") from exc

    return wrapper


def needs_repair(exc: BaseException) -> bool:
    """Whether a failure means the index is missing (Redis came back empty): recreate it."""
    text = " ".join(str(error).lower() for error in _chain(exc))
    return any(fragment in text for fragment in _MISSING_INDEX)


def _describe(exc: BaseException) -> str:
    """The redis-py error's class name (a redisvl error names the one it wraps)."""
    root = list(_chain(exc))[-1]
    if needs_repair(exc):
        return f"{type(root).__name__} (index missing)"
    return type(root).__name__


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and its causes, outermost first."""
    chain = [exc]
    while (cause := chain[-1].__cause__) is not None and len(chain) < 10:
        chain.append(cause)
    return chain
