"""API keys: tenants' keys from SENTINEL_API_KEYS and from the admin API, stored hashed.

Only a key's SHA-256 digest reaches Redis; the raw key is shown once, when it is created, so
a Redis dump, replica or `MONITOR` yields no usable key. Created keys hold 32 random bytes, so
a plain SHA-256 is enough (a slow KDF protects guessable secrets, and would cost every
request). Keys are never logged.

    sentinel:apikey:<sha256 hex>  HASH  id, tenant, name, created_at, revoked, rate_limit
    sentinel:apikeys              HASH  id -> sha256 hex (for listing and revoking by id)

A revoked key keeps its record (listing shows it). Whether keys are required at all is a
setting (SENTINEL_AUTH), never inferred from what Redis holds.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from typing import Literal

import msgspec
from redis.asyncio import Redis

from app.cache.errors import redis_errors_as_unavailable
from app.cache.keys import ROOT, text
from app.errors import KeyNotFound, KeyNotRevocable

RECORD_PREFIX = f"{ROOT}:apikey:"
REGISTRY_KEY = f"{ROOT}:apikeys"
KEY_PREFIX = "sk-sentinel-"
KEY_BYTES = 32
# Longer credentials are refused without hashing them.
MAX_KEY_CHARS = 512
ENV_SOURCE_NAME = "SENTINEL_API_KEYS"


class ApiKey(msgspec.Struct, frozen=True, kw_only=True):
    """What Sentinel knows about one API key (never the key itself)."""

    id: str
    tenant: str
    name: str
    created_at: float | None
    revoked: bool = False
    # Requests per minute for this key; None: RATE_LIMIT_PER_MINUTE; 0: no limit.
    rate_limit_per_minute: int | None = None
    source: Literal["admin", "env"] = "admin"


def digest(raw: str) -> bytes:
    """SHA-256 of a key: what is stored and compared instead of the key."""
    return hashlib.sha256(raw.encode()).digest()


class ApiKeys:
    """Resolves keys to tenants; creates, lists and revokes the keys stored in Redis."""

    def __init__(self, redis: Redis, *, env_keys: Mapping[str, str]) -> None:
        self._redis = redis
        self._env: list[tuple[bytes, ApiKey]] = []
        for raw, tenant in env_keys.items():
            hashed = digest(raw)
            key = ApiKey(
                # From the digest: stable across instances and restarts, whatever the order.
                id=f"env-{hashed.hex()[:12]}",
                tenant=tenant,
                name=ENV_SOURCE_NAME,
                created_at=None,
                source="env",
            )
            self._env.append((hashed, key))

    def resolve_configured(self, raw: str) -> ApiKey | None:
        """The SENTINEL_API_KEYS key `raw` is, else None; no Redis, constant time per key."""
        if not raw or len(raw) > MAX_KEY_CHARS:
            return None
        hashed = digest(raw)
        found: ApiKey | None = None
        # Compare against every configured key in constant time, without stopping early.
        for candidate, key in self._env:
            if hmac.compare_digest(hashed, candidate):
                found = key
        return found

    @redis_errors_as_unavailable
    async def resolve_created(self, raw: str) -> ApiKey | None:
        """The admin-created key `raw` is when it is valid (known, not revoked), else None."""
        if not raw or len(raw) > MAX_KEY_CHARS:
            return None
        # A lookup by digest leaks nothing about the key through its timing.
        record = await self._redis.hgetall(RECORD_PREFIX + digest(raw).hex())
        stored = _from_record(record)
        return None if stored is None or stored.revoked else stored

    @redis_errors_as_unavailable
    async def create(
        self, tenant: str, name: str = "", rate_limit_per_minute: int | None = None
    ) -> tuple[str, ApiKey]:
        """A new key for a tenant: (the raw key, to show once; its record)."""
        raw = KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)
        hashed = digest(raw).hex()
        key = ApiKey(
            id=f"key_{secrets.token_hex(8)}",
            tenant=tenant,
            name=name,
            created_at=time.time(),
            rate_limit_per_minute=rate_limit_per_minute,
        )
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                RECORD_PREFIX + hashed,
                mapping={
                    "id": key.id,
                    "tenant": key.tenant,
                    "name": key.name,
                    "created_at": repr(key.created_at),
                    "revoked": 0,
                    "rate_limit": "" if rate_limit_per_minute is None else rate_limit_per_minute,
                },
            )
            pipe.hset(REGISTRY_KEY, key.id, hashed)
            await pipe.execute()
        return raw, key

    @redis_errors_as_unavailable
    async def list_keys(self) -> list[ApiKey]:
        """Every key: the setting's first, then created ones (revoked included), oldest first."""
        registry = await self._redis.hgetall(REGISTRY_KEY)
        async with self._redis.pipeline(transaction=False) as pipe:
            for hashed in registry.values():
                pipe.hgetall(RECORD_PREFIX + text(hashed))
            records = await pipe.execute()
        stored = [key for key in map(_from_record, records) if key is not None]
        stored.sort(key=lambda key: (key.created_at or 0.0, key.id))
        return [key for _, key in self._env] + stored

    @redis_errors_as_unavailable
    async def revoke(self, key_id: str) -> ApiKey:
        """Revoke a created key at once, on every instance; KeyNotFound for an unknown id."""
        for _, key in self._env:
            if key.id == key_id:
                raise KeyNotRevocable(
                    f"key {key_id} is set in SENTINEL_API_KEYS; remove it there and restart"
                )
        hashed = await self._redis.hget(REGISTRY_KEY, key_id)
        if hashed is None:
            raise KeyNotFound(f"no API key has id {key_id!r}")
        record_key = RECORD_PREFIX + text(hashed)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(record_key, "revoked", 1)
            pipe.hgetall(record_key)
            _, record = await pipe.execute()
        revoked = _from_record(record)
        if revoked is None:  # pragma: no cover - the registry and the record are written together
            raise KeyNotFound(f"no API key has id {key_id!r}")
        return revoked


def _from_record(record: Mapping[bytes | str, bytes | str]) -> ApiKey | None:
    fields = {text(name): text(value) for name, value in record.items()}
    if not fields.get("id") or not fields.get("tenant"):
        return None
    limit = fields.get("rate_limit", "")
    return ApiKey(
        id=fields["id"],
        tenant=fields["tenant"],
        name=fields.get("name", ""),
        created_at=float(fields.get("created_at") or 0.0),
        revoked=fields.get("revoked") == "1",
        rate_limit_per_minute=int(limit) if limit else None,
    )
