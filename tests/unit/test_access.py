"""AccessControl without a Redis server: open never asks Redis, keys never opens without it."""

from __future__ import annotations

import socket

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from app.cache.apikeys import ApiKeys
from app.cache.breaker import CacheBreaker
from app.cache.ratelimit import RateLimiter
from app.errors import CacheUnavailable, InvalidApiKey
from app.service.access import AccessControl


def unreachable_redis() -> Redis:
    """A client for a port nobody listens on: every call fails at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return Redis(port=port, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))


def access(redis: Redis, *, mode: str, env: dict[str, str] | None = None) -> AccessControl:
    async def probe() -> None:
        await redis.ping()

    return AccessControl(
        ApiKeys(redis, env_keys=env or {}),
        RateLimiter(redis),
        mode=mode,  # type: ignore[arg-type]
        default_limit=600,
        admin_key="admin-key",
        breaker=CacheBreaker(probe, failure_threshold=100, probe_interval=60),
        budget=0.5,
    )


async def test_open_mode_admits_any_credential_without_asking_redis() -> None:
    redis = unreachable_redis()
    control = access(redis, mode="open")
    for credential in (None, "unused", "sk-anything"):
        assert await control.admit(credential) == ""
    await redis.aclose()


async def test_keys_mode_with_redis_away_admits_configured_keys_and_never_opens() -> None:
    redis = unreachable_redis()
    control = access(redis, mode="keys", env={"sk-configured": "team-a"})
    # Configured keys are checked in memory; their rate limit fails open while Redis is away.
    assert await control.admit("sk-configured") == "team-a"
    with pytest.raises(InvalidApiKey, match="an API key is required"):
        await control.admit(None)
    # A key Redis would have to vouch for: 503, never admission.
    with pytest.raises(CacheUnavailable, match="cannot check this API key") as info:
        await control.admit("sk-created-by-the-admin")
    assert info.value.status_code == 503
    assert info.value.code == "CACHE_UNAVAILABLE"
    await redis.aclose()
