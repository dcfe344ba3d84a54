"""Redis failures become CacheUnavailable at the cache's edge, so callers never see redis-py."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from redis.exceptions import RedisError

from app.errors import CacheUnavailable

P = ParamSpec("P")
T = TypeVar("T")


def redis_errors_as_unavailable(func: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Re-raise any RedisError (connection, timeout, reply) from `func` as CacheUnavailable."""

    @functools.wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await func(*args, **kwargs)
        except RedisError as exc:
            raise CacheUnavailable(f"Redis failed: {type(exc).__name__}") from exc

    return wrapper
