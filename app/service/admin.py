"""What the admin routes do: manage API keys, inspect and invalidate cache entries."""

from __future__ import annotations

import logging
import re
from typing import Any

import msgspec

from app.cache.admin import ListedEntry
from app.cache.apikeys import ApiKey, ApiKeys
from app.cache.store import CacheStore
from app.errors import BadRequest, EntryNotFound
from app.providers.upstreams.router import ProviderRouter

log = logging.getLogger("sentinel.admin")

# RediSearch's default MAXSEARCHRESULTS: FT.SEARCH refuses an offset + limit beyond it.
MAX_LISTED = 10_000
_ENTRY_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


class CreatedKey(msgspec.Struct, kw_only=True):
    """Body of POST /v1/admin/keys: the raw key, shown this once and never again."""

    id: str
    key: str
    tenant: str
    name: str
    created_at: float | None
    rate_limit_per_minute: int | None


class KeyList(msgspec.Struct, kw_only=True):
    """Body of GET /v1/admin/keys."""

    data: list[ApiKey]


class EntryView(msgspec.Struct, kw_only=True):
    """One cache entry as the admin routes show it (the embedding left out)."""

    id: str
    tenant: str
    model_id: str
    model: str
    provider: str
    prompt: str
    response: str
    tool_calls: list[dict[str, Any]] | None
    finish_reason: str
    created_at: float
    hits: int
    # Seconds left; -1: no expiry.
    ttl: int
    prompt_tokens: int
    completion_tokens: int


class EntryList(msgspec.Struct, kw_only=True):
    """Body of GET /v1/cache/entries: one page and how many match in all."""

    data: list[EntryView]
    total: int
    offset: int
    limit: int


class TopEntries(msgspec.Struct, kw_only=True):
    """Body of GET /v1/metrics/top-entries: the most-hit entries, most hits first."""

    entries: list[EntryView]


class Deleted(msgspec.Struct, kw_only=True):
    """Body of the deleting routes: how many entries went, and the filters applied."""

    deleted: int
    tenant: str | None = None
    model: str | None = None


class Admin:
    """API keys and cache entries, for the holder of SENTINEL_ADMIN_KEY."""

    def __init__(self, *, store: CacheStore, keys: ApiKeys, providers: ProviderRouter) -> None:
        self.store = store
        self.keys = keys
        self.providers = providers

    async def create_key(
        self, tenant: str, name: str = "", rate_limit_per_minute: int | None = None
    ) -> CreatedKey:
        """A new API key for a tenant."""
        raw, key = await self.keys.create(tenant, name, rate_limit_per_minute)
        log.info("api key created", extra={"fields": {"key_id": key.id, "tenant": tenant}})
        return CreatedKey(
            id=key.id,
            key=raw,
            tenant=key.tenant,
            name=key.name,
            created_at=key.created_at,
            rate_limit_per_minute=key.rate_limit_per_minute,
        )

    async def list_keys(self) -> KeyList:
        """Every key (never the key itself), revoked ones included."""
        return KeyList(data=await self.keys.list_keys())

    async def revoke_key(self, key_id: str) -> ApiKey:
        """Revoke a created key; its next request answers 401 on every instance."""
        key = await self.keys.revoke(key_id)
        log.info("api key revoked", extra={"fields": {"key_id": key.id, "tenant": key.tenant}})
        return key

    async def entries(
        self, *, tenant: str | None, model: str | None, offset: int, limit: int
    ) -> EntryList:
        """A page of entries, optionally of one tenant and/or one model."""
        if offset + limit > MAX_LISTED:
            raise BadRequest(
                f"offset + limit must be at most {MAX_LISTED}; narrow the listing with "
                "tenant= or model=",
                param="offset",
            )
        page = await self.store.search(
            tenant=tenant or None, model_id=self._model_id(model), offset=offset, limit=limit
        )
        return EntryList(
            data=[_view(listed) for listed in page.entries],
            total=page.total,
            offset=offset,
            limit=limit,
        )

    async def top_entries(self, *, tenant: str | None, limit: int) -> TopEntries:
        """The most-hit entries alive, of one tenant or of all (None), most hits first."""
        top = await self.store.top(tenant=tenant, limit=limit)
        return TopEntries(entries=[_view(listed) for listed in top])

    async def entry(self, entry_id: str) -> EntryView:
        """One entry; EntryNotFound when it does not exist (or expired)."""
        listed = await self.store.get(entry_id) if _ENTRY_ID.match(entry_id) else None
        if listed is None:
            raise EntryNotFound(f"no cache entry has id {entry_id!r} (it may have expired)")
        return _view(listed)

    async def delete_entry(self, entry_id: str) -> Deleted:
        """Delete one entry: neither an exact nor a semantic lookup finds it afterwards."""
        if not (_ENTRY_ID.match(entry_id) and await self.store.delete(entry_id)):
            raise EntryNotFound(f"no cache entry has id {entry_id!r} (it may have expired)")
        log.info("cache entry deleted", extra={"fields": {"entry_id": entry_id}})
        return Deleted(deleted=1)

    async def invalidate(self, *, tenant: str | None, model: str | None) -> Deleted:
        """Delete every entry of a tenant, of a model, or of a model within a tenant."""
        if not tenant and not model:
            raise BadRequest(
                "name the scope to invalidate: tenant=, model= or both "
                "(POST /v1/cache/flush deletes every entry)",
                param="tenant",
            )
        model_id = self._model_id(model)
        deleted = await self.store.delete_matching(tenant=tenant or None, model_id=model_id)
        log.info(
            "cache scope invalidated",
            extra={"fields": {"tenant": tenant, "model": model_id, "deleted": deleted}},
        )
        return Deleted(deleted=deleted, tenant=tenant or None, model=model_id)

    async def flush(self) -> Deleted:
        """Delete every entry of this embedder; the index stays."""
        deleted = await self.store.flush()
        log.info("cache flushed", extra={"fields": {"deleted": deleted}})
        return Deleted(deleted=deleted)

    def _model_id(self, model: str | None) -> str | None:
        """The `provider/model` id entries store, routed as a request's model is."""
        if not model:
            return None
        provider, native = self.providers.resolve(model)
        return f"{provider.name}/{native}"


def _view(listed: ListedEntry) -> EntryView:
    entry = listed.entry
    return EntryView(
        id=entry.id,
        tenant=entry.tenant,
        model_id=entry.model_id,
        model=entry.model,
        provider=entry.provider,
        prompt=entry.prompt,
        response=entry.response,
        tool_calls=msgspec.json.decode(entry.tool_calls) if entry.tool_calls else None,
        finish_reason=entry.finish_reason,
        created_at=entry.created_at,
        hits=entry.hits,
        ttl=listed.ttl,
        prompt_tokens=entry.prompt_tokens,
        completion_tokens=entry.completion_tokens,
    )
