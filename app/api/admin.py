"""Admin routes (SENTINEL_ADMIN_KEY): API keys, and the entries of the cache.

POST   /v1/admin/keys              create a tenant's key (the raw key is in this answer only)
GET    /v1/admin/keys              list keys
DELETE /v1/admin/keys/{key_id}     revoke a key
GET    /v1/cache/entries           page through entries (?tenant=&model=&offset=&limit=)
GET    /v1/cache/entries/{id}      one entry
DELETE /v1/cache/entries/{id}      delete one entry (exact and semantic layers at once)
DELETE /v1/cache?tenant=&model=    invalidate a scope
POST   /v1/cache/flush             delete every entry, keep the index
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from app.api.auth import require_admin_key
from app.api.errors import ERROR_RESPONSES
from app.cache.apikeys import ApiKey
from app.service.admin import Admin, CreatedKey, Deleted, EntryList, EntryView, KeyList
from app.settings import TENANT_PATTERN

ADMIN_ONLY = [require_admin_key]
MAX_PAGE = 100


class KeyRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of POST /v1/admin/keys."""

    tenant: Annotated[str, msgspec.Meta(pattern=TENANT_PATTERN)]
    name: Annotated[str, msgspec.Meta(max_length=200)] = ""
    # None: RATE_LIMIT_PER_MINUTE; 0: no limit for this key.
    rate_limit_per_minute: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] | None = None


@post("/v1/admin/keys", status_code=201, guards=ADMIN_ONLY, responses=ERROR_RESPONSES)
async def create_key(data: JSONBody[KeyRequest], admin: NamedDependency[Admin]) -> CreatedKey:
    """Create an API key for a tenant; the answer holds the key, shown this once only."""
    return await admin.create_key(data.tenant, data.name, data.rate_limit_per_minute)


@get("/v1/admin/keys", cache=False, guards=ADMIN_ONLY, responses=ERROR_RESPONSES)
async def list_keys(admin: NamedDependency[Admin]) -> KeyList:
    """Every API key's id, tenant, name, limit and state; never the key itself."""
    return await admin.list_keys()


@delete(
    "/v1/admin/keys/{key_id:str}", status_code=200, guards=ADMIN_ONLY, responses=ERROR_RESPONSES
)
async def revoke_key(key_id: FromPath[str], admin: NamedDependency[Admin]) -> ApiKey:
    """Revoke a key: its next request answers 401, on every instance."""
    return await admin.revoke_key(key_id)


@get("/v1/cache/entries", cache=False, guards=ADMIN_ONLY, responses=ERROR_RESPONSES)
async def list_entries(
    admin: NamedDependency[Admin],
    tenant: FromQuery[str | None] = None,
    model: FromQuery[str | None] = None,
    offset: Annotated[int, QueryParameter(ge=0)] = 0,
    limit: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE)] = 20,
) -> EntryList:
    """A page of cache entries, of one tenant and/or model when asked (none: all)."""
    return await admin.entries(tenant=tenant, model=model, offset=offset, limit=limit)


@get("/v1/cache/entries/{entry_id:str}", cache=False, guards=ADMIN_ONLY, responses=ERROR_RESPONSES)
async def get_entry(entry_id: FromPath[str], admin: NamedDependency[Admin]) -> EntryView:
    """One cache entry: prompt, answer, tenant, model, hits and TTL."""
    return await admin.entry(entry_id)


@delete(
    "/v1/cache/entries/{entry_id:str}",
    status_code=200,
    guards=ADMIN_ONLY,
    responses=ERROR_RESPONSES,
)
async def delete_entry(entry_id: FromPath[str], admin: NamedDependency[Admin]) -> Deleted:
    """Delete one entry from both layers at once."""
    return await admin.delete_entry(entry_id)


@delete("/v1/cache", status_code=200, guards=ADMIN_ONLY, responses=ERROR_RESPONSES)
async def invalidate(
    admin: NamedDependency[Admin],
    tenant: FromQuery[str | None] = None,
    model: FromQuery[str | None] = None,
) -> Deleted:
    """Delete every entry of a tenant and/or a model; answers how many went."""
    return await admin.invalidate(tenant=tenant, model=model)


@post("/v1/cache/flush", status_code=200, guards=ADMIN_ONLY, responses=ERROR_RESPONSES)
async def flush(admin: NamedDependency[Admin]) -> Deleted:
    """Delete every entry of this embedder (the index stays)."""
    return await admin.flush()


ADMIN_ROUTES = [
    create_key,
    list_keys,
    revoke_key,
    list_entries,
    get_entry,
    delete_entry,
    invalidate,
    flush,
]
