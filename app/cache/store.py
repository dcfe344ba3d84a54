"""Entries in Redis: one hash per entry, indexed by RediSearch HNSW (index.py).

CacheStore is what the service holds: the hot path (take_hit, nearest, put) lives here; the
index's lifecycle (index.py) and the admin queries (admin.py) are parts it hands calls to.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from redis.asyncio import Redis
from redis.typing import EncodableT, FieldT

from app.cache import keys
from app.cache.admin import EntryAdmin
from app.cache.entry import ENTRY_FIELDS, Entry, from_values, new_entry, to_hash
from app.cache.errors import redis_errors_as_unavailable
from app.cache.hits import HitCounter
from app.cache.index import VECTOR_FIELD, Candidate, EntryIndex
from app.cache.vectors import encode_vector

# The store's API speaks in entries and KNN candidates: callers import them from here.
__all__ = ["CacheStore", "Candidate", "Entry", "new_entry"]


class CacheStore:
    """Reads and writes entries; owns the RediSearch index for one embedder's vectors."""

    def __init__(
        self,
        redis: Redis,
        *,
        embedder_id: str,
        dimension: int,
        ef_runtime: int,
    ) -> None:
        self._redis = redis
        self.dimension = dimension
        self.prefix = keys.entry_prefix(embedder_id, dimension)
        self.index_name = keys.index_name(embedder_id, dimension)
        self._ef_runtime = ef_runtime
        self.index = EntryIndex(
            redis, prefix=self.prefix, name=self.index_name, dimension=dimension
        )
        self.admin = EntryAdmin(redis, prefix=self.prefix, index_name=self.index_name)
        self.hits = HitCounter(redis)
        # The index's lifecycle and the admin queries, under the names callers use: bound
        # methods of the parts, so their signatures and docstrings are written once (and a
        # change to one of them belongs in the part, not in a subclass of CacheStore).
        self.ensure_index = self.index.ensure
        self.recover = self.index.recover
        self.ping = self.index.ping
        self.index_state = self.index.state
        self.index_exists = self.index.exists
        self.count = self.index.count
        self.get = self.admin.get
        self.delete = self.admin.delete
        self.search = self.admin.search
        self.delete_matching = self.admin.delete_matching
        self.flush = self.admin.flush

    # --- the hot path ---------------------------------------------------------------------------

    @redis_errors_as_unavailable
    async def take_hit(self, entry_id: str) -> Entry | None:
        """Return the entry and count one hit on it, or None when it does not exist.

        The hit reaches the hash's `hits` field within HitCounter's interval; `hits` on
        the returned entry is the count stored so far.
        """
        key = self._key(entry_id)
        entry = from_values(entry_id, await self._redis.hmget(key, list(ENTRY_FIELDS)))
        if entry is None:  # gone (expired, evicted) or not a whole entry
            return None
        self.hits.add(key)
        return entry

    async def nearest(
        self, vector: npt.NDArray[np.float32], *, scope: str, k: int
    ) -> list[Candidate]:
        """KNN over the HNSW index within one scope, best first."""
        return await self.index.nearest(vector, scope=scope, k=k, ef_runtime=self._ef_runtime)

    @redis_errors_as_unavailable
    async def put(
        self,
        entry: Entry,
        vector: npt.NDArray[np.float32] | None,
        *,
        ttl: int,
    ) -> None:
        """Store (or replace) an entry with a TTL, atomically.

        Without a vector the entry is exact-only: it is not in the HNSW index (a conversation
        ending in a tool result has no question to match semantically).
        """
        key = self._key(entry.id)
        mapping: dict[FieldT, EncodableT] = to_hash(entry)
        if vector is not None:
            mapping[VECTOR_FIELD] = encode_vector(vector, self.dimension)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.hset(key, mapping=mapping)
            pipe.expire(key, ttl)
            await pipe.execute()

    @redis_errors_as_unavailable
    async def ttl(self, entry_id: str) -> int:
        """Seconds left before an entry expires (-2 when it is gone)."""
        return int(await self._redis.ttl(self._key(entry_id)))

    def _key(self, entry_id: str) -> str:
        return keys.entry_key(self.prefix, entry_id)
