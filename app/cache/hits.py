"""Hit counts written to entry hashes in batches, off the request path.

Unless RediSearch runs with PARTIAL_INDEXED_DOCS (the embedded server does), any write to an
indexed hash re-indexes the whole document: a new doc id and a delete + insert in the HNSW
graph, ~1.7 ms of Redis time at 100k entries (bench/results.md). Counting hits here and adding
them once per interval takes the write off the hit's path and turns N hits on an entry into
one write.
"""

from __future__ import annotations

from collections import Counter

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.cache.flushing import PeriodicFlush
from app.cache.keys import ROOT

# HINCRBY only keys that still exist: an entry that expired since its hit must not come back
# as a half entry holding nothing but `hits` and no TTL. KEYS[1] is the most-hit ranking
# (a sorted set of entry keys, trimmed to its top TOP_KEPT; expired members are dropped when
# read; a day's TTL renewed by each flush, so under memory pressure it is evictable too).
_ADD_HITS = """
local top = KEYS[1]
for i = 2, #KEYS do
  local key = KEYS[i]
  if redis.call('EXISTS', key) == 1 then
    redis.call('HINCRBY', key, 'hits', ARGV[i - 1])
    redis.call('ZINCRBY', top, ARGV[i - 1], key)
  end
end
redis.call('ZREMRANGEBYRANK', top, 0, -tonumber(ARGV[#ARGV]) - 1)
redis.call('EXPIRE', top, 86400)
return #KEYS - 1
"""
TOP_KEY = f"{ROOT}:top_entries"
TOP_KEPT = 1000


class HitCounter(PeriodicFlush):
    """Counts hits per entry key in memory and flushes them to Redis periodically."""

    def __init__(self, redis: Redis, *, interval: float = 1.0) -> None:
        super().__init__(interval=interval, what="hit counts")
        self._pending: Counter[str] = Counter()
        self._add_hits = redis.register_script(_ADD_HITS)

    @property
    def pending(self) -> bool:
        """Whether hits wait to be written."""
        return bool(self._pending)

    def add(self, key: str) -> None:
        """Count one hit on an entry key."""
        self._pending[key] += 1

    async def flush(self) -> None:
        """Write the pending counts; on a Redis error they are kept for the next flush."""
        if not self._pending:
            return
        batch, self._pending = self._pending, Counter()
        keys = list(batch)
        try:
            await self._add_hits(
                keys=[TOP_KEY, *keys], args=[*(batch[key] for key in keys), TOP_KEPT]
            )
        except RedisError:
            self._pending.update(batch)
            raise
