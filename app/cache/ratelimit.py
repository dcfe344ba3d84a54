"""Requests per minute per API key, counted in Redis so every instance enforces one limit.

A sliding window counter: the count of the current fixed minute plus the previous minute's
count weighted by how much of it still lies inside the last 60 seconds. Unlike a fixed window
it allows no burst of twice the limit across a minute boundary, and unlike a log of
timestamps it keeps three numbers per key. One Lua script reads, decides and writes, so
concurrent requests on any number of instances cannot both take the last slot; it reads the
clock of Redis, so instances with skewed clocks still share one window.
"""

from __future__ import annotations

import msgspec
from redis.asyncio import Redis

from app.cache.errors import redis_errors_as_unavailable
from app.cache.keys import ROOT

BUCKET_PREFIX = f"{ROOT}:ratelimit:"
WINDOW_SECONDS = 60

# KEYS[1]: the key's bucket; ARGV: limit, window in ms. Returns {allowed, retry_after_s,
# remaining}. A refused request is not counted, so a client retrying in a loop does not push
# its own wait further out.
_SLIDING_WINDOW = """
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local current = math.floor(now / window)
local elapsed = now - current * window
local state = redis.call('HMGET', KEYS[1], 'window', 'count', 'previous')
local stored = tonumber(state[1])
local count = tonumber(state[2]) or 0
local previous = tonumber(state[3]) or 0
if stored == current - 1 then
  previous = count
  count = 0
elseif stored ~= current then
  previous = 0
  count = 0
end
local weight = (window - elapsed) / window
if previous * weight + count + 1 <= limit then
  count = count + 1
  redis.call('HSET', KEYS[1], 'window', current, 'count', count, 'previous', previous)
  redis.call('PEXPIRE', KEYS[1], 2 * window)
  return {1, 0, math.floor(limit - previous * weight - count)}
end
local wait
if count + 1 <= limit then
  -- room in this minute once enough of the previous minute's share has slid out
  wait = window * (1 - (limit - 1 - count) / previous) - elapsed
else
  -- this minute is full: into the next one, once enough of this minute's share slid out
  wait = (window - elapsed) + window * (1 - (limit - 1) / count)
end
return {0, math.max(1, math.ceil(wait / 1000)), 0}
"""


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """Whether a request may go ahead; if not, the seconds to wait (for Retry-After)."""

    allowed: bool
    retry_after: int
    remaining: int


class RateLimiter:
    """A sliding-window requests-per-minute limit per bucket (an API key's id)."""

    def __init__(self, redis: Redis, *, window_seconds: int = WINDOW_SECONDS) -> None:
        self._script = redis.register_script(_SLIDING_WINDOW)
        self._window_ms = window_seconds * 1000

    @redis_errors_as_unavailable
    async def hit(self, bucket: str, limit: int) -> Decision:
        """Count one request in `bucket` if `limit` per window allows it."""
        allowed, retry_after, remaining = await self._script(
            keys=[BUCKET_PREFIX + bucket], args=[limit, self._window_ms]
        )
        return Decision(
            allowed=bool(allowed), retry_after=int(retry_after), remaining=int(remaining)
        )
