"""Entries in Redis: one hash per entry, indexed by RediSearch HNSW through redisvl."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
from redis.asyncio import Redis
from redis.commands.search.query import Query as SearchQuery
from redis.exceptions import ResponseError
from redis.typing import EncodableT, FieldT
from redisvl.exceptions import RedisVLError
from redisvl.index import AsyncSearchIndex
from redisvl.query import VectorQuery
from redisvl.query.filter import Tag
from redisvl.schema import IndexSchema

from app.cache import keys
from app.cache.entry import (
    ENTRY_FIELDS,
    Entry,
    from_hash,
    from_values,
    hash_field,
    new_entry,
    to_hash,
)
from app.cache.errors import needs_repair, redis_errors_as_unavailable
from app.cache.hits import HitCounter
from app.cache.vectors import encode_vector

log = logging.getLogger("sentinel.cache")

VECTOR_FIELD = "embedding"
# HNSW build parameters: M=16 and EF_CONSTRUCTION=200 are the values measured in
# ../shared/docs/environment.md (recall@1 0.995 at 100k with EF_RUNTIME 200).
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 200
# What a KNN neighbour carries back: its prompt is all the guard needs before a hit is taken.
_PROMPT = hash_field("prompt")

# The store's API speaks in entries: callers import them from here.
__all__ = ["CacheStore", "Entry", "new_entry"]


class Candidate(msgspec.Struct, frozen=True):
    """A KNN neighbour: an entry id, its cosine similarity to the query and its prompt."""

    entry_id: str
    similarity: float
    prompt: str


class IndexState(msgspec.Struct, frozen=True, kw_only=True):
    """The index as FT.INFO reports it: whether it exists, and how far it is built."""

    exists: bool
    # True while RediSearch scans existing keys into it (after FT.CREATE on a full keyspace);
    # lookups work meanwhile but miss entries not yet scanned.
    indexing: bool = False
    percent_indexed: float = 1.0
    num_docs: int = 0


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
        self._index = AsyncSearchIndex(self._schema(), redis_client=redis)
        self.hits = HitCounter(redis)

    def _schema(self) -> Any:
        return IndexSchema.from_dict(
            {
                "index": {"name": self.index_name, "prefix": self.prefix, "storage_type": "hash"},
                "fields": [
                    {"name": "scope", "type": "tag"},
                    {"name": "tenant", "type": "tag"},
                    {"name": "model_id", "type": "tag"},
                    {
                        "name": VECTOR_FIELD,
                        "type": "vector",
                        "attrs": {
                            "algorithm": "hnsw",
                            "dims": self.dimension,
                            "distance_metric": "cosine",
                            "datatype": "float32",
                            "m": HNSW_M,
                            "ef_construction": HNSW_EF_CONSTRUCTION,
                        },
                    },
                ],
            }
        )

    @redis_errors_as_unavailable
    async def ensure_index(self) -> bool:
        """Create the index when it is missing; return True when it was created."""
        if await self._index.exists():
            return False
        try:
            await self._index.create(overwrite=False)
        except (ResponseError, RedisVLError) as exc:  # another instance created it first
            if "already exists" not in str(exc).lower():
                raise
            return False
        return True

    @redis_errors_as_unavailable
    async def recover(self) -> None:
        """The circuit breaker's probe: PING, then recreate the index if Redis lost it."""
        # Connections opened before the outage may be dead (Redis restarted): drop the idle
        # ones, so that no request trips on one once the breaker closes.
        await self._redis.connection_pool.disconnect(inuse_connections=False)
        await self._redis.ping()
        if await self.ensure_index():
            log.warning(
                "index %s was missing (Redis came back without its data): recreated",
                self.index_name,
            )

    @redis_errors_as_unavailable
    async def ping(self) -> bool:
        """Whether Redis answers."""
        return bool(await self._redis.ping())

    @redis_errors_as_unavailable
    async def index_state(self) -> IndexState:
        """Whether the index exists and how far RediSearch has built it (one FT.INFO)."""
        try:
            info = await self._index.info()
        except RedisVLError as exc:
            if needs_repair(exc):
                return IndexState(exists=False)
            raise
        return IndexState(
            exists=True,
            indexing=_number(info.get("indexing")) != 0,
            percent_indexed=_number(info.get("percent_indexed"), default=1.0),
            num_docs=int(_number(info.get("num_docs"))),
        )

    @redis_errors_as_unavailable
    async def index_exists(self) -> bool:
        """Whether the RediSearch index is there."""
        return bool(await self._index.exists())

    @redis_errors_as_unavailable
    async def count(self) -> int:
        """Number of entries the index holds (expired ones have left it)."""
        info = await self._index.info()
        return int(info.get("num_docs", 0))

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

    @redis_errors_as_unavailable
    async def nearest(
        self, vector: npt.NDArray[np.float32], *, scope: str, k: int
    ) -> list[Candidate]:
        """KNN over the HNSW index within one scope, best first."""
        query = VectorQuery(
            vector=encode_vector(vector, self.dimension),
            vector_field_name=VECTOR_FIELD,
            return_fields=[_PROMPT],
            filter_expression=Tag("scope") == scope,
            num_results=k,
            ef_runtime=self._ef_runtime,
            return_score=True,
        )
        results = await self._index.query(query)
        candidates = []
        for doc in results:
            distance = doc.get("vector_distance")
            if distance is None:  # expired while the search ran
                continue
            # RediSearch's COSINE distance is 1 - cosine similarity.
            candidates.append(
                Candidate(
                    keys.entry_id_of(self.prefix, doc["id"]),
                    1.0 - float(distance),
                    keys.text(doc.get(_PROMPT)),
                )
            )
        candidates.sort(key=lambda c: c.similarity, reverse=True)
        return candidates

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

    # Admin operations: listing, reading without counting a hit, deleting.

    @redis_errors_as_unavailable
    async def get(self, entry_id: str) -> ListedEntry | None:
        """The entry as stored with its TTL, or None; unlike take_hit it counts no hit."""
        key = self._key(entry_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hmget(key, list(ENTRY_FIELDS))
            pipe.ttl(key)
            values, ttl = await pipe.execute()
        entry = from_values(entry_id, values)
        return None if entry is None else ListedEntry(entry=entry, ttl=int(ttl))

    @redis_errors_as_unavailable
    async def delete(self, entry_id: str) -> bool:
        """Delete an entry from both layers at once: the exact key is the indexed hash."""
        return bool(await self._redis.delete(self._key(entry_id)))

    @redis_errors_as_unavailable
    async def search(
        self,
        *,
        tenant: str | None = None,
        model_id: str | None = None,
        offset: int = 0,
        limit: int = 20,
    ) -> EntryPage:
        """A page of entries (FT.SEARCH on the TAG fields), in index order, with their TTLs.

        A filter that is None or "" matches everything: a TAG cannot match the empty string,
        so open-mode entries (tenant "") are listed by leaving `tenant` out.
        """
        if _unmatchable(tenant, model_id):
            return EntryPage(total=0, entries=[])
        query = (
            SearchQuery(_tag_filter(tenant, model_id))
            .return_fields(*ENTRY_FIELDS)
            .paging(offset, limit)
            .dialect(2)
        )
        result = await self._redis.ft(self.index_name).search(query)
        docs = list(result.docs)
        async with self._redis.pipeline(transaction=False) as pipe:
            for doc in docs:
                pipe.ttl(doc.id)
            ttls = await pipe.execute()
        entries = []
        for doc, ttl in zip(docs, ttls, strict=True):
            entry = from_hash(keys.entry_id_of(self.prefix, doc.id), vars(doc))
            if entry is not None and ttl != -2:  # -2: expired since the search
                entries.append(ListedEntry(entry=entry, ttl=int(ttl)))
        return EntryPage(total=int(result.total), entries=entries)

    @redis_errors_as_unavailable
    async def delete_matching(
        self, *, tenant: str | None = None, model_id: str | None = None, batch: int = 500
    ) -> int:
        """Delete every entry of a tenant and/or model, `batch` keys at a time; the count."""
        if _unmatchable(tenant, model_id):
            return 0
        query_text = _tag_filter(tenant, model_id)
        deleted = 0
        while True:
            query = SearchQuery(query_text).no_content().paging(0, batch).dialect(2)
            result = await self._redis.ft(self.index_name).search(query)
            found = [doc.id for doc in result.docs]
            if not found:
                return deleted
            removed = int(await self._redis.unlink(*found))
            deleted += removed
            if removed == 0:  # only entries expiring right now left: they leave on their own
                return deleted

    @redis_errors_as_unavailable
    async def flush(self, batch: int = 500) -> int:
        """Delete every entry under this embedder's prefix (indexed or not); keep the index."""
        deleted = 0
        pending: list[bytes | str] = []
        # SCAN returns every key that exists for the whole scan, even while others go.
        async for key in self._redis.scan_iter(match=self.prefix + "*", count=batch):
            pending.append(key)
            if len(pending) >= batch:
                deleted += int(await self._redis.unlink(*pending))
                pending = []
        if pending:
            deleted += int(await self._redis.unlink(*pending))
        return deleted


def _number(value: Any, default: float = 0.0) -> float:
    """A number from FT.INFO (int, float, or their text); `default` when absent or odd."""
    if isinstance(value, bytes):
        value = value.decode()
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


class ListedEntry(msgspec.Struct, frozen=True, kw_only=True):
    """An entry as an admin sees it, with the seconds it has left (-1: no expiry)."""

    entry: Entry
    ttl: int


class EntryPage(msgspec.Struct, frozen=True, kw_only=True):
    """One page of a listing and the number of entries matching in all."""

    total: int
    entries: list[ListedEntry]


def _unmatchable(*values: str | None) -> bool:
    """Whether a filter value holds control characters: no stored TAG does, and RediSearch's
    query parser rejects them (a syntax error, not an empty result)."""
    return any(ch < " " or ch == "\x7f" for value in values if value for ch in value)


def _tag_filter(tenant: str | None, model_id: str | None) -> str:
    """A RediSearch query on the TAG fields (values escaped by redisvl); "*" for no filter."""
    parts = [
        str(Tag(field) == value)
        for field, value in (("tenant", tenant), ("model_id", model_id))
        if value
    ]
    return " ".join(parts) or "*"
