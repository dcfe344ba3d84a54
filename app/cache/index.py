"""The RediSearch index over one embedder's entries: schema, lifecycle, KNN and TAG queries.

The only module that holds redisvl values (it has no type hints): the hot path and the admin
queries get plain results from here.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
from redis.asyncio import Redis
from redis.exceptions import ResponseError
from redisvl.exceptions import RedisVLError
from redisvl.index import AsyncSearchIndex
from redisvl.query.filter import Tag
from redisvl.schema import IndexSchema

from app.cache import keys
from app.cache.entry import ENTRY_FIELDS, Entry, from_values, hash_field
from app.cache.errors import needs_repair, redis_errors_as_unavailable
from app.cache.vectors import VectorDtype, encode_vector
from app.cache.wire import command, execute_packed, pack, release_kept

log = logging.getLogger("sentinel.cache")

VECTOR_FIELD = "embedding"
# HNSW build parameters (bench/knn-study.md, 100k 384-d FLOAT16 entries, near duplicates at
# cosine 0.9): M=32 reaches recall@1 0.997 at EF_RUNTIME 64 in 1.2 ms, where M=16 needs
# EF_RUNTIME 200 and 1.8 ms for 0.993; it costs ~140 bytes more per entry in the index. An index
# created earlier keeps the M it was built with (FT.CREATE fixes it).
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 200

# Entry fields indexed as TAGs: a KNN is filtered by scope; admin lists and deletes by the
# others.
_SCOPE = hash_field("scope")
_TENANT = hash_field("tenant")
_MODEL_ID = hash_field("model_id")
_PROMPT = hash_field("prompt")
# What a KNN neighbour carries back: its whole entry, so the one served needs no second read
# (an HMGET round trip per semantic hit: ~0.2 ms of latency and ~0.1 ms of the event loop's
# CPU under load, bench/profile-semantic.md), then its distance.
_DISTANCE = "vector_distance"
_RETURNED: tuple[Any, ...] = (*ENTRY_FIELDS, _DISTANCE)
_DISTANCE_AT = len(ENTRY_FIELDS)
_RETURNED_BYTES: tuple[Any, ...] = tuple(field.encode() for field in _RETURNED)


class Candidate(msgspec.Struct, frozen=True):
    """A KNN neighbour: an entry id, its cosine similarity to the query and its prompt; and
    the entry as the search read it (None when the finder did not read it)."""

    entry_id: str
    similarity: float
    prompt: str
    entry: Entry | None = None


class IndexState(msgspec.Struct, frozen=True, kw_only=True):
    """The index as FT.INFO reports it: whether it exists, and how far it is built."""

    exists: bool
    # True while RediSearch scans existing keys into it (after FT.CREATE on a full keyspace);
    # lookups work meanwhile but miss entries not yet scanned.
    indexing: bool = False
    percent_indexed: float = 1.0
    num_docs: int = 0


class EntryIndex:
    """The HNSW + TAG index over the entry hashes under `prefix`, and the Redis behind it."""

    def __init__(
        self, redis: Redis, *, prefix: str, name: str, dimension: int, dtype: VectorDtype
    ) -> None:
        self._redis = redis
        self.prefix = prefix
        self.name = name
        self.dimension = dimension
        self.dtype: VectorDtype = dtype
        # redisvl closes only a client it created: this one stays the caller's.
        self._index = AsyncSearchIndex(self._schema(), redis_client=redis)

    def _schema(self) -> Any:
        return IndexSchema.from_dict(
            {
                "index": {"name": self.name, "prefix": self.prefix, "storage_type": "hash"},
                "fields": [
                    {"name": _SCOPE, "type": "tag"},
                    {"name": _TENANT, "type": "tag"},
                    {"name": _MODEL_ID, "type": "tag"},
                    {
                        "name": VECTOR_FIELD,
                        "type": "vector",
                        "attrs": {
                            "algorithm": "hnsw",
                            "dims": self.dimension,
                            "distance_metric": "cosine",
                            "datatype": self.dtype,
                            "m": HNSW_M,
                            "ef_construction": HNSW_EF_CONSTRUCTION,
                        },
                    },
                ],
            }
        )

    # --- lifecycle ------------------------------------------------------------------------------

    @redis_errors_as_unavailable
    async def ensure(self) -> bool:
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
        await release_kept(self._redis)
        await self._redis.connection_pool.disconnect(inuse_connections=False)
        await self._redis.ping()
        if await self.ensure():
            log.warning(
                "index %s was missing (Redis came back without its data): recreated", self.name
            )

    @redis_errors_as_unavailable
    async def ping(self) -> bool:
        """Whether Redis answers."""
        return bool(await self._redis.ping())

    @redis_errors_as_unavailable
    async def state(self) -> IndexState:
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
    async def exists(self) -> bool:
        """Whether the RediSearch index is there."""
        return bool(await self._index.exists())

    @redis_errors_as_unavailable
    async def count(self) -> int:
        """Number of entries the index holds (expired ones have left it)."""
        info = await self._index.info()
        return int(info.get("num_docs", 0))

    # --- queries --------------------------------------------------------------------------------

    @redis_errors_as_unavailable
    async def nearest(
        self,
        vector: npt.NDArray[np.float32],
        *,
        scope: str,
        k: int,
        ef_runtime: int,
        floor: float | None = None,
    ) -> list[Candidate]:
        """KNN over the HNSW index within one scope, best first, each with its entry; with
        `floor`, only the neighbours at least that similar (the others' fields are not read).

        One FT.SEARCH with a query string built once per scope (the same query redisvl's
        VectorQuery builds: TAG filter, KNN, EF_RUNTIME, sorted by distance, DIALECT 2), its
        reply read here: redisvl's query objects and result parsing cost the event loop more
        than the search itself takes in Redis on a small cache. The command is packed once per
        scope too, all but the vector (cache/wire.py): redis-py packing its ~35 arguments on
        every call cost the loop more than the rest of the search.
        """
        # The query's bytes must have the index's TYPE.
        blob = encode_vector(vector, self.dimension, dtype=self.dtype)
        head, count = _search_head(self.name, scope, k, ef_runtime)
        reply = await execute_packed(self._redis, command(head, count, blob))
        candidates = []
        for key, values in _documents(reply, floor):
            distance = values[_DISTANCE_AT]
            if distance is None:  # expired while the search ran
                continue
            entry_id = keys.entry_id_of(self.prefix, key)
            entry = from_values(entry_id, values[:_DISTANCE_AT])
            if entry is None:  # not a whole entry (a half-written or damaged hash)
                continue
            # RediSearch's COSINE distance is 1 - cosine similarity.
            candidates.append(Candidate(entry_id, 1.0 - float(distance), entry.prompt, entry))
        candidates.sort(key=lambda c: c.similarity, reverse=True)
        return candidates


@functools.lru_cache(maxsize=4096)
def _knn_query(scope: str, k: int, ef_runtime: int) -> str:
    """The KNN query string of one scope (the scope's TAG value escaped by redisvl)."""
    return (
        f"({Tag(_SCOPE) == scope})=>[KNN {k} @{VECTOR_FIELD} $vector "
        f"EF_RUNTIME {ef_runtime} AS {_DISTANCE}]"
    )


@functools.lru_cache(maxsize=4096)
def _search_head(name: str, scope: str, k: int, ef_runtime: int) -> tuple[bytes, int]:
    """FT.SEARCH's arguments but the vector, packed (RESP), and how many they are."""
    args: list[str | int] = [
        "FT.SEARCH",
        name,
        _knn_query(scope, k, ef_runtime),
        "RETURN",
        len(_RETURNED),
        *_RETURNED,
        "SORTBY",
        _DISTANCE,
        "ASC",
        "DIALECT",
        2,
        "LIMIT",
        0,
        k,
        "PARAMS",
        2,
        "vector",
    ]
    return pack(*args), len(args)


def _documents(reply: Any, floor: float | None = None) -> list[tuple[bytes | str, list[Any]]]:
    """(key, values in _RETURNED's order) of each document of an FT.SEARCH reply: RESP3's map
    or RESP2's flat list (the client's protocol decides); with `floor`, the documents less
    similar than that are left out (their fields not read). Field names are looked up as the
    reply spells them (bytes, or str with a client that decodes replies), not each decoded."""
    if isinstance(reply, dict):
        results = reply.get(b"results", reply.get("results")) or []
        found = [
            (
                result.get(b"id", result.get("id")),
                result.get(b"extra_attributes", result.get("extra_attributes")) or {},
            )
            for result in results
        ]
    else:
        # [total, key, [field, value, ...], key, [...], ...]
        found = []
        for i in range(1, len(reply) - 1, 2):
            flat = reply[i + 1] or []
            found.append((reply[i], dict(zip(flat[::2], flat[1::2], strict=False))))
    documents = []
    for key, fields in found:
        names = _RETURNED_BYTES if isinstance(key, bytes) else _RETURNED
        distance = fields.get(names[_DISTANCE_AT])
        if floor is not None and distance is not None and 1.0 - float(distance) < floor:
            continue
        documents.append((key, [fields.get(name) for name in names]))
    return documents


def tag_query(*, tenant: str | None, model_id: str | None) -> str:
    """A RediSearch query on the TAG fields (values escaped by redisvl); "*" for no filter."""
    parts = [
        str(Tag(field) == value)
        for field, value in ((_TENANT, tenant), (_MODEL_ID, model_id))
        if value
    ]
    return " ".join(parts) or "*"


def _number(value: Any, default: float = 0.0) -> float:
    """A number from FT.INFO (int, float, or their text); `default` when absent or odd."""
    if isinstance(value, bytes):
        value = value.decode()
    try:
        return float(value)
    except (TypeError, ValueError):
        return default
