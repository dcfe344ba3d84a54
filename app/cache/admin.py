"""Admin queries on entries: read without counting a hit, list by tenant or model, delete."""

from __future__ import annotations

from typing import cast

import msgspec
from redis.asyncio import Redis
from redis.commands.search.query import Query as SearchQuery

from app.cache import keys
from app.cache.entry import ENTRY_FIELDS, Entry, from_hash, from_values
from app.cache.errors import redis_errors_as_unavailable
from app.cache.hits import TOP_KEPT, TOP_KEY
from app.cache.index import tag_query


class ListedEntry(msgspec.Struct, frozen=True, kw_only=True):
    """An entry as an admin sees it, with the seconds it has left (-1: no expiry)."""

    entry: Entry
    ttl: int


class EntryPage(msgspec.Struct, frozen=True, kw_only=True):
    """One page of a listing and the number of entries matching in all."""

    total: int
    entries: list[ListedEntry]


class EntryAdmin:
    """The operator's view of one embedder's entries (never on a request's path)."""

    def __init__(self, redis: Redis, *, prefix: str, index_name: str) -> None:
        self._redis = redis
        self._prefix = prefix
        self._index_name = index_name

    @redis_errors_as_unavailable
    async def get(self, entry_id: str) -> ListedEntry | None:
        """The entry as stored with its TTL, or None; unlike take_hit it counts no hit."""
        key = keys.entry_key(self._prefix, entry_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hmget(key, list(ENTRY_FIELDS))
            pipe.ttl(key)
            values, ttl = await pipe.execute()
        entry = from_values(entry_id, values)
        return None if entry is None else ListedEntry(entry=entry, ttl=int(ttl))

    @redis_errors_as_unavailable
    async def delete(self, entry_id: str) -> bool:
        """Delete an entry from both layers at once: the exact key is the indexed hash."""
        return bool(await self._redis.delete(keys.entry_key(self._prefix, entry_id)))

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
            SearchQuery(tag_query(tenant=tenant, model_id=model_id))
            .return_fields(*ENTRY_FIELDS)
            .paging(offset, limit)
            .dialect(2)
        )
        result = await self._redis.ft(self._index_name).search(query)
        docs = list(result.docs)
        async with self._redis.pipeline(transaction=False) as pipe:
            for doc in docs:
                pipe.ttl(doc.id)
            ttls = await pipe.execute()
        entries = []
        for doc, ttl in zip(docs, ttls, strict=True):
            entry = from_hash(keys.entry_id_of(self._prefix, doc.id), vars(doc))
            if entry is not None and ttl != -2:  # -2: expired since the search
                entries.append(ListedEntry(entry=entry, ttl=int(ttl)))
        return EntryPage(total=int(result.total), entries=entries)

    @redis_errors_as_unavailable
    async def top(self, *, tenant: str | None = None, limit: int = 20) -> list[ListedEntry]:
        """The most-hit entries still alive (of `tenant` only, unless None), most hits first.

        Read from the ranking HitCounter keeps; members that expired are dropped from it.
        """
        found: list[ListedEntry] = []
        members = await self._redis.zrevrange(TOP_KEY, 0, TOP_KEPT - 1)
        ranked = [keys.text(cast(bytes, member)) for member in members]
        ours = [key for key in ranked if key.startswith(self._prefix)]
        for start in range(0, len(ours), 100):
            page = ours[start : start + 100]
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in page:
                    pipe.hmget(key, list(ENTRY_FIELDS))
                    pipe.ttl(key)
                replies = await pipe.execute()
            gone: list[str] = []
            for key, values, ttl in zip(page, replies[::2], replies[1::2], strict=True):
                entry = from_values(keys.entry_id_of(self._prefix, key), values)
                if entry is None:
                    gone.append(key)
                elif tenant is None or entry.tenant == tenant:
                    found.append(ListedEntry(entry=entry, ttl=int(ttl)))
            if gone:
                await self._redis.zrem(TOP_KEY, *gone)
            if len(found) >= limit:
                break
        return found[:limit]

    @redis_errors_as_unavailable
    async def delete_matching(
        self, *, tenant: str | None = None, model_id: str | None = None, batch: int = 500
    ) -> int:
        """Delete every entry of a tenant and/or model, `batch` keys at a time; the count."""
        if _unmatchable(tenant, model_id):
            return 0
        query_text = tag_query(tenant=tenant, model_id=model_id)
        deleted = 0
        while True:
            query = SearchQuery(query_text).no_content().paging(0, batch).dialect(2)
            result = await self._redis.ft(self._index_name).search(query)
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
        async for key in self._redis.scan_iter(match=self._prefix + "*", count=batch):
            pending.append(key)
            if len(pending) >= batch:
                deleted += int(await self._redis.unlink(*pending))
                pending = []
        if pending:
            deleted += int(await self._redis.unlink(*pending))
        return deleted


def _unmatchable(*values: str | None) -> bool:
    """Whether a filter value holds control characters: no stored TAG does, and RediSearch's
    query parser rejects them (a syntax error, not an empty result)."""
    return any(ch < " " or ch == "\x7f" for value in values if value for ch in value)
