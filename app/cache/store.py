"""Entries in Redis: one hash per entry, indexed by RediSearch HNSW (index.py).

CacheStore is what the service holds: the hot path (take_hit, nearest, put) lives here; the
index's lifecycle (index.py) and the admin queries (admin.py) are parts it hands calls to.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import numpy.typing as npt
from redis.asyncio import Redis
from redis.typing import EncodableT, FieldT

from app.cache import keys
from app.cache.admin import EntryAdmin
from app.cache.aliases import Alias, Aliases
from app.cache.entry import ENTRY_FIELDS, Entry, from_values, new_entry, to_hash
from app.cache.errors import redis_errors_as_unavailable
from app.cache.hits import HitCounter
from app.cache.index import VECTOR_FIELD, Candidate, EntryIndex
from app.cache.vectors import DEFAULT_VECTOR_DTYPE, VectorDtype, encode_vector

# An entry whose semantic hit was found wrong serves only questions closer than that one by
# this much; it remembers at most MAX_VETOED questions it must never answer (the oldest go).
DISPUTE_MARGIN = 0.005
MAX_VETOED = 64

# Only on an entry that still exists (a dispute must not create a half entry). ARGV: the
# question's digest, the new floor, the most characters `vetoed` may hold.
_DISPUTE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local vetoed = (redis.call('HGET', KEYS[1], 'vetoed') or '') .. ' ' .. ARGV[1]
local limit = tonumber(ARGV[3])
if #vetoed > limit then vetoed = string.sub(vetoed, #vetoed - limit + 1) end
local floor = tonumber(redis.call('HGET', KEYS[1], 'min_similarity') or '0') or 0
redis.call('HSET', KEYS[1], 'vetoed', vetoed)
if tonumber(ARGV[2]) > floor then redis.call('HSET', KEYS[1], 'min_similarity', ARGV[2]) end
return 1
"""

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
        vector_dtype: VectorDtype = DEFAULT_VECTOR_DTYPE,
    ) -> None:
        self._redis = redis
        self.dimension = dimension
        self.vector_dtype: VectorDtype = vector_dtype
        self.prefix = keys.entry_prefix(embedder_id, dimension, vector_dtype)
        self.index_name = keys.index_name(embedder_id, dimension, vector_dtype)
        self._ef_runtime = ef_runtime
        self.index = EntryIndex(
            redis,
            prefix=self.prefix,
            name=self.index_name,
            dimension=dimension,
            dtype=vector_dtype,
        )
        self.admin = EntryAdmin(redis, prefix=self.prefix, index_name=self.index_name)
        self.hits = HitCounter(redis)
        self.aliases = Aliases(
            redis,
            entry_prefix=self.prefix,
            alias_prefix=keys.alias_prefix(embedder_id, dimension, vector_dtype),
        )
        self._dispute = redis.register_script(_DISPUTE)
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
        self.top = self.admin.top
        self.delete_matching = self.admin.delete_matching
        self.flush = self.admin.flush

    # --- the hot path ---------------------------------------------------------------------------

    @redis_errors_as_unavailable
    async def take_hit(
        self, entry_id: str, accept: Callable[[Entry], bool] | None = None
    ) -> Entry | None:
        """Return the entry and count one hit on it, or None when it does not exist (or
        `accept` refuses it: then no hit is counted).

        The hit reaches the hash's `hits` field within HitCounter's interval; `hits` on
        the returned entry is the count stored so far.
        """
        key = self._key(entry_id)
        entry = from_values(entry_id, await self._redis.hmget(key, list(ENTRY_FIELDS)))
        if entry is None:  # gone (expired, evicted) or not a whole entry
            return None
        if accept is not None and not accept(entry):
            return None
        self.hits.add(key)
        return entry

    def count_hit(self, entry_id: str) -> None:
        """Count one hit on an entry read some other way (a KNN search returns whole entries):
        like take_hit's, it reaches the hash within HitCounter's interval."""
        self.hits.add(self._key(entry_id))

    @redis_errors_as_unavailable
    async def take_hit_or_alias(
        self, entry_id: str, accept: Callable[[Entry, Alias], bool]
    ) -> tuple[Entry, Alias | None] | None:
        """Like take_hit, in one round trip also through a paraphrase alias (aliases.py): the
        entry (alias None), else the entry the alias names if `accept` takes it, else None."""
        entry, alias = await self.aliases.read(entry_id)
        if entry is None or (alias is not None and not accept(entry, alias)):
            return None
        self.hits.add(self._key(entry.id))
        return entry, alias

    @redis_errors_as_unavailable
    async def alias(self, aliases: Mapping[str, Alias]) -> int:
        """Let each entry id be served by its alias's target, in one round trip; how many were
        written (not those whose target is gone)."""
        return await self.aliases.write(aliases)

    async def nearest(
        self, vector: npt.NDArray[np.float32], *, scope: str, k: int, floor: float | None = None
    ) -> list[Candidate]:
        """KNN over the HNSW index within one scope, best first (with `floor`: only the
        neighbours at least that similar)."""
        return await self.index.nearest(
            vector, scope=scope, k=k, ef_runtime=self._ef_runtime, floor=floor
        )

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
            mapping[VECTOR_FIELD] = encode_vector(vector, self.dimension, dtype=self.vector_dtype)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.hset(key, mapping=mapping)
            pipe.expire(key, ttl)
            await pipe.execute()

    @redis_errors_as_unavailable
    async def dispute(self, entry_id: str, question_digest: str, similarity: float) -> bool:
        """Stop this entry answering that question, and anything no closer than `similarity`
        (its own threshold rises above it). False when the entry is gone."""
        held = await self._dispute(
            keys=[self._key(entry_id)],
            args=[question_digest, repr(similarity + DISPUTE_MARGIN), MAX_VETOED * 17],
        )
        return bool(held)

    @redis_errors_as_unavailable
    async def ttl(self, entry_id: str) -> int:
        """Seconds left before an entry expires (-2 when it is gone)."""
        return int(await self._redis.ttl(self._key(entry_id)))

    def _key(self, entry_id: str) -> str:
        return keys.entry_key(self.prefix, entry_id)
