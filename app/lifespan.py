"""Start-up and shutdown: Redis (embedded or external), index, embedder, HTTP session."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import aiohttp
from litestar import Litestar
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from app.cache.apikeys import ApiKeys
from app.cache.audits import AuditStore
from app.cache.breaker import CacheBreaker
from app.cache.flight import SingleFlight
from app.cache.metrics import MetricsStore
from app.cache.negative import NegativeCache
from app.cache.ratelimit import RateLimiter
from app.cache.store import CacheStore
from app.embedded_redis import EmbeddedRedis
from app.errors import StartupError
from app.observability.recorder import Recorder
from app.providers.embedders import build_embedder
from app.providers.embedders.breaker import EmbedderBreaker
from app.providers.upstreams.router import ProviderRouter, build_router
from app.service.access import AccessControl
from app.service.admin import Admin
from app.service.guard import Guard, configured_decision
from app.service.query import QueryService
from app.service.verifier import Calibration, Verifier
from app.settings import Settings

log = logging.getLogger("sentinel.lifespan")

CONNECT_ATTEMPTS = 3
# An embedded Redis replays its AOF and rebuilds HNSW graphs before answering: ~110 s at 100k.
EMBEDDED_START_TIMEOUT = 300.0


@asynccontextmanager
async def lifespan(app: Litestar) -> AsyncIterator[None]:
    """Build every resource on app.state and release them in reverse order."""
    settings: Settings = app.state.settings
    async with AsyncExitStack() as stack:
        try:
            redis_url = settings.redis_url
            app.state.redis_mode = "external" if redis_url else "embedded"
            if not redis_url:
                embedded = EmbeddedRedis(
                    port=settings.embedded_redis_port, data_dir=settings.embedded_redis_dir
                )
                await embedded.start(timeout=EMBEDDED_START_TIMEOUT)
                stack.push_async_callback(embedded.stop)
                redis_url = embedded.url
            redis = await connect_redis(
                redis_url,
                connect_timeout=settings.redis_connect_timeout_ms / 1000,
                socket_timeout=settings.redis_socket_timeout_ms / 1000,
            )
            stack.push_async_callback(redis.aclose)
            await require_search_module(redis)
            await warn_without_partial_indexing(redis)
            await warn_about_eviction_policy(redis)

            session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=settings.upstream_timeout),
                raise_for_status=False,
            )
            stack.push_async_callback(session.close)
            embedder = await build_embedder(settings, session)
            stack.push_async_callback(embedder.aclose)

            guard, threshold = configured_decision(settings, embedder.id)
            verifier, calibration = await _verifier(settings, guard, stack)
            router = _router(settings, session)
            flight = SingleFlight(redis)
            await flight.start()
            stack.push_async_callback(flight.aclose)
            store = CacheStore(
                redis,
                embedder_id=embedder.id,
                dimension=embedder.dimension,
                ef_runtime=settings.knn_ef_runtime,
                vector_dtype=settings.vector_dtype,
            )
            if await store.ensure_index():
                log.info("created index %s", store.index_name)
            breaker = CacheBreaker(
                store.recover,
                failure_threshold=settings.cache_breaker_failures,
                probe_interval=settings.cache_probe_interval_ms / 1000,
                # A probe is not on anyone's request path: it may wait as long as other calls.
                probe_timeout=settings.redis_socket_timeout_ms / 1000,
            )
            stack.push_async_callback(breaker.aclose)
            store.hits.start(paused=lambda: breaker.is_open)
            stack.push_async_callback(store.hits.aclose)
            metrics = _recorder(settings, redis, breaker, router)
            stack.push_async_callback(metrics.aclose)
            embed_breaker = EmbedderBreaker(
                embedder,
                budget=settings.embed_timeout,
                failure_threshold=settings.embed_breaker_failures,
                probe_interval=settings.embed_probe_interval_ms / 1000,
            )
            stack.push_async_callback(embed_breaker.aclose)
            app.state.service = QueryService(
                store=store,
                metrics=metrics,
                embedder=embedder,
                providers=router,
                similarity_threshold=threshold,
                guard=guard,
                verifier=verifier,
                calibration=calibration,
                max_wrong_hit_rate=settings.max_wrong_hit_rate,
                near_miss_checks=settings.verifier in ("checks", "overlap"),
                gated=settings.verifier == "overlap",
                negative=NegativeCache(redis, ttl=settings.negative_ttl),
                flight=flight,
                # A waiter gives up once the leader's provider call must have ended.
                wait_timeout=settings.upstream_timeout + 5.0,
                breaker=breaker,
                embed_breaker=embed_breaker,
                audits=AuditStore(redis),
                verify_sample_rate=settings.verify_sample_rate,
                answer_agreement=settings.answer_agreement,
                paraphrase_alias=settings.paraphrase_alias,
                lookup_timeout=settings.cache_lookup_timeout_ms / 1000,
                write_timeout=settings.cache_write_timeout_ms / 1000,
                ttl=settings.cache_ttl,
                top_k=settings.knn_top_k,
                max_prompt_chars=settings.max_prompt_chars,
            )
            if app.state.service.audit is not None:
                stack.push_async_callback(app.state.service.audit.aclose)
            api_keys = ApiKeys(redis, env_keys=settings.api_keys)
            app.state.access = AccessControl(
                api_keys,
                RateLimiter(redis),
                mode=settings.auth_mode,
                default_limit=settings.rate_limit_per_minute,
                admin_key=settings.sentinel_admin_key,
                breaker=breaker,
                budget=settings.cache_write_timeout_ms / 1000,
            )
            app.state.admin = Admin(store=store, keys=api_keys, providers=router)
        except StartupError as exc:
            log.error("startup failed: %s", exc)
            raise
        _warn_about(settings, embedder.id, guard, threshold)
        if settings.auth_mode == "open":
            log.warning(
                "Sentinel runs open (SENTINEL_AUTH=open, or no key setting): anyone who can "
                "reach it may use and fill the cache; set SENTINEL_API_KEYS, or "
                "SENTINEL_ADMIN_KEY and create keys with POST /v1/admin/keys"
            )
        yield


async def _verifier(
    settings: Settings, guard: Guard | None, stack: AsyncExitStack
) -> tuple[Verifier | None, Calibration | None]:
    """The hit verifier and its calibration, when VERIFIER is on or overlap and a guard runs
    before it."""
    if settings.verifier not in ("on", "overlap") or guard is None:
        return None, None
    calibration = Calibration.for_model()
    verifier = await Verifier.load()
    stack.push_async_callback(verifier.aclose)
    return verifier, calibration


async def connect_redis(
    url: str, *, connect_timeout: float = 2.0, socket_timeout: float = 5.0
) -> Redis:
    """Connect and PING, retrying with backoff; StartupError names the URL's host on failure.

    The client itself never retries: redis-py's default (10 retries with backoff) would turn
    a dead Redis into seconds of waiting per call. Requests bypass the cache instead, and the
    circuit breaker's probe finds out when Redis is back.
    """
    delay = 0.2
    for attempt in range(1, CONNECT_ATTEMPTS + 1):
        redis: Redis = Redis.from_url(
            url,
            decode_responses=False,
            socket_connect_timeout=connect_timeout,
            socket_timeout=socket_timeout,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            await redis.ping()
        except RedisError as exc:
            await redis.aclose()
            if attempt == CONNECT_ATTEMPTS:
                raise StartupError(
                    f"cannot reach Redis at {_safe_url(url)} after {attempt} attempts "
                    f"({type(exc).__name__}); check REDIS_URL"
                ) from None
            await asyncio.sleep(delay)
            delay *= 2
        else:
            return redis
    raise AssertionError("unreachable")  # pragma: no cover


async def require_search_module(redis: Redis) -> None:
    """Refuse a Redis without RediSearch: the semantic layer needs its HNSW index."""
    modules = await redis.module_list()
    names = {_module_name(module) for module in modules}
    if not names & {"search", "searchlight", "ft"}:
        raise StartupError(
            "Redis has no search module (RediSearch): use Redis Stack or Redis 8, "
            "or unset REDIS_URL to let Sentinel start its own embedded Redis Stack"
        )


async def warn_without_partial_indexing(redis: Redis) -> None:
    """Say so when RediSearch re-indexes a whole entry each time its hit counter changes."""
    try:
        reply = await redis.execute_command(  # type: ignore[no-untyped-call]
            "FT.CONFIG", "GET", "PARTIAL_INDEXED_DOCS"
        )
    except RedisError:
        return  # a server that hides FT.CONFIG (some managed Redis); nothing to advise
    value = _config_value(reply)
    if value not in {"true", "1", "yes"}:
        log.warning(
            "RediSearch runs without PARTIAL_INDEXED_DOCS: every hit-count flush re-indexes "
            "the entries it touches; load the module with `PARTIAL_INDEXED_DOCS 1` "
            "(REDISEARCH_ARGS on Redis Stack images)"
        )


# Policies that may evict keys without a TTL: API-key records, the key registry, counters.
_UNSAFE_EVICTION = ("allkeys-lru", "allkeys-lfu", "allkeys-random")


async def warn_about_eviction_policy(redis: Redis) -> None:
    """Say so when Redis may evict what Sentinel needs to stay correct (keys, counters)."""
    try:
        reply = await redis.config_get("maxmemory-policy")
    except RedisError:
        return  # CONFIG is disabled on some managed Redis; nothing to check
    policy = _config_value(reply)
    if policy in _UNSAFE_EVICTION:
        log.warning(
            "Redis evicts with maxmemory-policy %s: under memory pressure it may evict API-key "
            "records (created keys stop working) and metrics counters; use volatile-lru, which "
            "evicts only cache entries (they carry a TTL); see infra/redis/redis.conf",
            policy,
        )


def _config_value(reply: object) -> str:
    """The value from FT.CONFIG GET's reply, RESP2 ([[name, value]]) or RESP3 ({name: value})."""
    if isinstance(reply, dict):
        values = list(reply.values())
    elif isinstance(reply, list) and reply and isinstance(reply[0], list | tuple):
        values = [reply[0][1]] if len(reply[0]) > 1 else []
    else:
        values = []
    if not values:
        return ""
    value = values[0]
    return (value.decode() if isinstance(value, bytes) else str(value)).lower()


def _module_name(module: object) -> str:
    name = module.get(b"name", module.get("name", b"")) if isinstance(module, dict) else b""
    return name.decode().lower() if isinstance(name, bytes) else str(name).lower()


def _router(settings: Settings, session: aiohttp.ClientSession) -> ProviderRouter:
    """Every provider from settings on the app's session; StartupError for a bad chain."""
    try:
        return build_router(
            session,
            timeout=settings.upstream_timeout,
            idle_timeout=settings.stream_idle_timeout,
            groq_api_key=settings.groq_api_key,
            groq_base_url=settings.groq_base_url,
            groq_model=settings.groq_model,
            openai_api_key=settings.openai_api_key,
            openai_base_url=settings.openai_base_url,
            openai_model=settings.openai_model,
            anthropic_api_key=settings.anthropic_api_key,
            anthropic_base_url=settings.anthropic_base_url,
            anthropic_model=settings.anthropic_model,
            openai_compatible_base_url=settings.openai_compatible_base_url,
            openai_compatible_api_key=settings.openai_compatible_api_key,
            openai_compatible_model=settings.openai_compatible_model,
            default_provider=settings.default_provider,
            fallbacks=settings.fallback_chains,
            extra_models=settings.extra_model_ids,
        )
    except ValueError as exc:
        raise StartupError(str(exc)) from None


def _safe_url(url: str) -> str:
    """The URL without credentials, fit for a log line."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else "(invalid URL)"


def _warn_about(
    settings: Settings, embedder_id: str, guard: Guard | None, threshold: float
) -> None:
    if not settings.upstream_configured:
        log.warning(
            "the default provider %s has no key: cache lookups work, its misses answer 503 "
            "UPSTREAM_NOT_CONFIGURED",
            settings.default_provider,
        )
    if settings.guard == "on" and guard is None:
        log.warning(
            "no hit guard is fitted for embedder %s: semantic hits are decided by cosine >= %s "
            "alone, which serves more near misses (see bench/quality.md)",
            embedder_id,
            threshold,
        )
    log.info(
        "sentinel ready",
        extra={
            "fields": {
                "embedder": embedder_id,
                "similarity_threshold": threshold,
                "guard": "off" if guard is None else f"p >= {guard.threshold}",
            }
        },
    )


def _recorder(
    settings: Settings, redis: Redis, breaker: CacheBreaker, router: ProviderRouter
) -> Recorder:
    """Metrics counted in process, flushed to Redis while it answers; told of provider calls."""
    metrics = Recorder(
        MetricsStore(redis),
        interval=settings.metrics_flush_interval_ms / 1000,
        max_tenants=settings.metrics_max_tenants,
    )
    metrics.start(paused=lambda: breaker.is_open)
    router.observe = metrics.upstream
    return metrics
