"""Settings: one Struct read once from the environment; a bad value stops the process."""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from typing import Annotated, Literal, get_args

import msgspec

from app.cache.vectors import DEFAULT_VECTOR_DTYPE, VectorDtype

# The cosine that decides alone when no guard runs (GUARD=off, or an embedder without a fitted
# guard); measured on ../shared/data/dev/pairs.jsonl (bench/quality.md). With the guard on,
# SIMILARITY_THRESHOLD defaults to the guard's own cosine floor instead.
DEFAULT_SIMILARITY_THRESHOLD = 0.9

# The request path's Redis budgets (CACHE_LOOKUP_TIMEOUT_MS, CACHE_WRITE_TIMEOUT_MS), in ms.
DEFAULT_LOOKUP_TIMEOUT_MS = 250
DEFAULT_WRITE_TIMEOUT_MS = 200

Threshold = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0.0)]
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]


# Fields whose values are secrets: masked in repr.
_SECRET_SUFFIXES = ("api_key", "api_keys", "admin_key")
# A tenant name: it is a TAG value in the index and appears in logs and admin listings.
TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
_TENANT = re.compile(TENANT_PATTERN)


# The providers Sentinel routes to (the `provider/` prefix of a model id).
ProviderName = Literal["groq", "openai", "anthropic", "openai_compatible"]
PROVIDERS: tuple[str, ...] = get_args(ProviderName)


class SettingsError(Exception):
    """A configuration value is missing or invalid; the message names the variable."""


def parse_api_keys(text: str) -> dict[str, str]:
    """`key1=tenantA,key2=tenantB` as {key: tenant}; ValueError (never quoting a key) if bad."""
    keys: dict[str, str] = {}
    for position, item in enumerate(text.split(","), start=1):
        if not item.strip():
            continue
        key, sep, tenant = (part.strip() for part in item.rpartition("="))
        if not sep or not key:
            raise ValueError(f"pair {position} is not `key=tenant`")
        if not _TENANT.match(tenant):
            raise ValueError(
                f"pair {position}: the tenant must be 1-64 letters, digits or . _ : - "
                "(starting with a letter or digit)"
            )
        if keys.get(key, tenant) != tenant:
            raise ValueError(f"pair {position}: the same key is given to two tenants")
        keys[key] = tenant
    return keys


def parse_chains(
    text: str | None, *, variable: str = "FALLBACKS", values_are_routes: bool = True
) -> dict[str, list[str]]:
    """`groq=openai,anthropic;openai=groq` as {"groq": ["openai", "anthropic"], ...}.

    Each key must start with a provider Sentinel routes to, and so must each value when
    `values_are_routes` (FALLBACKS; EXTRA_MODELS' values are a provider's own model names);
    ValueError naming `variable`.
    """
    chains: dict[str, list[str]] = {}
    for part in (text or "").split(";"):
        if not part.strip():
            continue
        key, equals, values = part.partition("=")
        entries = [value.strip() for value in values.split(",") if value.strip()]
        if not equals or not key.strip() or not entries:
            raise ValueError(f"{variable}: {part.strip()!r} is not `name=a,b`")
        routes = entries if values_are_routes else []
        for name in (key.strip(), *routes):
            if name.partition("/")[0] not in PROVIDERS:
                raise ValueError(
                    f"{variable}: {name!r} names no provider; known: {', '.join(PROVIDERS)}"
                )
        chains[key.strip()] = entries
    return chains


# dict=True: the parsed forms of list-valued settings are cached properties, parsed once.
class Settings(
    msgspec.Struct,
    kw_only=True,
    frozen=True,
    forbid_unknown_fields=True,
    rename="upper",
    dict=True,
):
    """Every knob Sentinel reads, named as its environment variable (upper case)."""

    redis_url: str | None = None
    embedded_redis_port: Port = 6390
    embedded_redis_dir: str = "var/redis"
    # The Redis client's connect and per-reply timeouts. They bound every Redis call that has
    # no budget of its own (admin routes, API keys, background writes); an admin batch
    # (UNLINK of 500 indexed entries) takes about 0.5 s, hence the 2 s.
    redis_connect_timeout_ms: Annotated[int, msgspec.Meta(ge=10, le=60_000)] = 500
    redis_socket_timeout_ms: Annotated[int, msgspec.Meta(ge=10, le=60_000)] = 2000
    # Time budgets of the cache's Redis work on the request path: each lookup read (exact key,
    # KNN, candidate) and each write (store, negative cache, metrics). Past one, or with Redis
    # unreachable, the request bypasses the cache (X-Sentinel-Cache: BYPASS).
    # 250, not 50: at concurrency 64 on 2 cores the event loop alone delays a read past 50 ms,
    # which bypassed 5% of requests and flapped the breaker (bench/load.md); 250 bypassed none.
    cache_lookup_timeout_ms: Annotated[int, msgspec.Meta(ge=1, le=60_000)] = (
        DEFAULT_LOOKUP_TIMEOUT_MS
    )
    cache_write_timeout_ms: Annotated[int, msgspec.Meta(ge=1, le=60_000)] = DEFAULT_WRITE_TIMEOUT_MS
    # Failed or late operations in a row that open the circuit breaker: then requests skip
    # Redis at once, and a probe PINGs it every CACHE_PROBE_INTERVAL_MS until it answers.
    cache_breaker_failures: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 3
    cache_probe_interval_ms: Annotated[int, msgspec.Meta(ge=10, le=60_000)] = 1000

    groq_api_key: str | None = None
    groq_base_url: str = "https://api.groq.com/openai/v1"
    groq_model: str = "llama-3.1-8b-instant"
    openai_api_key: str | None = None
    openai_base_url: str = "https://api.openai.com/v1"
    openai_model: str = "gpt-4o-mini"
    anthropic_api_key: str | None = None
    anthropic_base_url: str = "https://api.anthropic.com"
    anthropic_model: str = "claude-haiku-4-5"
    # Any OpenAI-compatible server (Ollama, vLLM, Together): configured by its base URL.
    openai_compatible_base_url: str | None = None
    openai_compatible_api_key: str | None = None
    openai_compatible_model: str | None = None
    # The provider for model names without a `provider/` prefix.
    default_provider: ProviderName = "groq"
    # Ordered fallbacks after retries fail on 429/5xx/timeout: `groq=openai,anthropic;openai=groq`.
    fallbacks: str | None = None
    # More routable models for GET /v1/models, beside each provider's default: `openai=gpt-4o`.
    extra_models: str | None = None
    upstream_timeout: PositiveFloat = 30.0
    # A stream that sends nothing for this long is broken (it is not stored).
    stream_idle_timeout: PositiveFloat = 30.0

    embedding_provider: Literal["local", "jina"] = "local"
    local_embedding_model: Literal["minilm-l6-sentinel-ft2-qint8", "minilm-l6-v2-int8"] = (
        "minilm-l6-sentinel-ft2-qint8"
    )
    jina_api_key: str | None = None
    jina_base_url: str = "https://api.jina.ai/v1"
    jina_model: str = "jina-embeddings-v3"
    jina_dimensions: PositiveInt = 1024
    # Time budget of one embedding on the request path. Past it, or when the embedder fails,
    # the request skips the semantic layer (the exact layer still serves, a miss goes to the
    # provider and its answer is stored for exact hits). Unset: 500 ms for the local model
    # (3-8 ms per query, seconds of queueing only when something is wrong), 1500 ms remote.
    embed_timeout_ms: Annotated[int, msgspec.Meta(ge=1, le=60_000)] | None = None
    # Failed or late embeddings in a row that open the embedder's breaker: then requests skip
    # embedding at once, and a probe embeds a short text every EMBED_PROBE_INTERVAL_MS.
    embed_breaker_failures: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 3
    embed_probe_interval_ms: Annotated[int, msgspec.Meta(ge=10, le=60_000)] = 1000

    # Unset: the guard's cosine floor with the guard on, DEFAULT_SIMILARITY_THRESHOLD without.
    similarity_threshold: Threshold | None = None
    guard: Literal["on", "off"] = "on"
    # Unset: the probability the shipped guard was tuned for (bench/quality.md).
    guard_threshold: Threshold | None = None
    # After the guard: "checks", deterministic near-miss checks (a changed number, negation,
    # an antonym, swapped roles; 18 µs a candidate); "overlap" (the default), those and the
    # cross-encoder that reads both questions (~4.4 ms a candidate) on the candidates the guard
    # would serve whose words are nearly all the question's (where word order decides: ~1 in 7
    # paraphrase hits); "on", the cross-encoder on every candidate, GUARD_THRESHOLD then giving
    # way to the calibrated cascade (slower and refuses more; bench/quality.md); "off", the
    # guard alone. MAX_WRONG_HIT_RATE sets the verifier's threshold. All of them need the guard.
    verifier: Literal["on", "overlap", "checks", "off"] = "overlap"
    # The wrong-hit rate semantic hits may have, mapped to the verifier's threshold by its
    # calibration curve (measured on validation pairs, half of them near misses: a harder mix
    # than live traffic). Unset: the calibration's default (0.10). Per request:
    # X-Sentinel-Max-Wrong-Hit-Rate.
    max_wrong_hit_rate: Threshold | None = None
    # Live verification: the share of semantic hits asked again of the provider in the
    # background (after the client has its answer), to estimate the wrong-hit rate per tenant
    # and model (/v1/metrics) and to stop a hit found wrong; 0 turns it off. 1% of semantic
    # hits costs about 1% of what they save.
    verify_sample_rate: Threshold = 0.01
    # Two answers agree when their embeddings' cosine reaches this (or their texts are equal).
    answer_agreement: Threshold = 0.8
    cache_ttl: PositiveInt = 3600
    # Seconds a provider failure that survived retries (429, 5xx, timeout) is answered again
    # from memory for the same request, without calling the provider; 0 turns it off.
    negative_ttl: Annotated[int, msgspec.Meta(ge=0, le=3600)] = 60
    # A paraphrase served semantically is aliased to the entry that served it, so asked again
    # it is served without an embedding (~1 ms instead of ~8); false: every paraphrase is
    # embedded and judged each time (existing aliases are still read until they expire).
    paraphrase_alias: bool = True
    knn_top_k: Annotated[int, msgspec.Meta(ge=1, le=100)] = 3
    # HNSW search breadth: 64 keeps near-duplicate recall@1 at 100k entries ≥ 0.99 with M=32
    # (bench/knn-study.md); the TAG filter on a small scope runs as a brute force scan anyway.
    knn_ef_runtime: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 64
    # How vectors are stored (entry hash and HNSW index). Each dtype has its own keys and
    # index: switching leaves the other's entries unread until their TTL removes them.
    vector_dtype: VectorDtype = DEFAULT_VECTOR_DTYPE
    max_prompt_chars: PositiveInt = 32000

    # Who may call the /v1 routes: "keys" (a tenant's API key on every request) or "open"
    # (anyone; credentials are ignored). Unset: "keys" when SENTINEL_API_KEYS or
    # SENTINEL_ADMIN_KEY is set, "open" otherwise. Never inferred from what Redis holds, so
    # losing Redis's data (a flush, an eviction, a new empty server) cannot open Sentinel.
    sentinel_auth: Literal["open", "keys"] | None = None
    # Tenants' API keys as `key=tenant` pairs, comma-separated (`sk-a=team-a,sk-b=team-b`);
    # more are created through the admin API.
    sentinel_api_keys: str | None = None
    # The key of the admin routes (/v1/admin/keys, /v1/cache/entries...); unset: they answer 403.
    sentinel_admin_key: str | None = None
    # Requests per minute per API key, counted in Redis across instances; 0 turns it off. A key
    # created with its own `rate_limit_per_minute` uses that instead.
    rate_limit_per_minute: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 600

    # Metrics are counted in process and written to Redis (totals, history) this often; a
    # crash loses at most this much. Past METRICS_MAX_TENANTS distinct tenants a process counts
    # the rest as "other" (Prometheus label cardinality).
    metrics_flush_interval_ms: Annotated[int, msgspec.Meta(ge=50, le=60_000)] = 1000
    metrics_max_tenants: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 100

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    host: str = "127.0.0.1"
    port: Port = 8000

    def __post_init__(self) -> None:
        if self.embedding_provider == "jina" and not self.jina_api_key:
            raise SettingsError(
                "EMBEDDING_PROVIDER=jina needs JINA_API_KEY; set it or use EMBEDDING_PROVIDER=local"
            )
        # Parsed here, once: a malformed list stops start-up with the variable's name.
        keys = self.api_keys
        try:
            _ = self.fallback_chains, self.extra_model_ids
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        if self.sentinel_auth == "keys" and not keys and self.sentinel_admin_key is None:
            raise SettingsError(
                "SENTINEL_AUTH=keys needs SENTINEL_API_KEYS or SENTINEL_ADMIN_KEY (to create "
                "keys with POST /v1/admin/keys); without either, no request could be admitted"
            )
        if self.sentinel_auth == "open" and keys:
            raise SettingsError(
                "SENTINEL_AUTH=open ignores every API key, but SENTINEL_API_KEYS is set; "
                "unset one of them"
            )
        if self.sentinel_admin_key is not None and self.sentinel_admin_key in keys:
            raise SettingsError(
                "SENTINEL_ADMIN_KEY: the admin key is also in SENTINEL_API_KEYS; give it its own "
                "value (the admin key is not a tenant key)"
            )

    def __repr__(self) -> str:
        """Like the default repr, with API keys masked so a stray log line leaks nothing."""
        shown = []
        for field in msgspec.structs.fields(self):
            value = getattr(self, field.name)
            if field.name.endswith(_SECRET_SUFFIXES) and value:
                value = "***"
            shown.append(f"{field.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    @functools.cached_property
    def api_keys(self) -> dict[str, str]:
        """SENTINEL_API_KEYS as {key: tenant}; SettingsError names the variable when malformed."""
        try:
            return parse_api_keys(self.sentinel_api_keys or "")
        except ValueError as exc:
            raise SettingsError(f"SENTINEL_API_KEYS: {exc}") from None

    @functools.cached_property
    def fallback_chains(self) -> dict[str, list[str]]:
        """FALLBACKS parsed (checked at load)."""
        return parse_chains(self.fallbacks)

    @functools.cached_property
    def extra_model_ids(self) -> dict[str, list[str]]:
        """EXTRA_MODELS parsed (checked at load)."""
        return parse_chains(self.extra_models, variable="EXTRA_MODELS", values_are_routes=False)

    @property
    def auth_mode(self) -> Literal["open", "keys"]:
        """SENTINEL_AUTH, else "keys" when any key setting is set, else "open"."""
        if self.sentinel_auth is not None:
            return self.sentinel_auth
        return "keys" if self.api_keys or self.sentinel_admin_key else "open"

    @property
    def embed_timeout(self) -> float:
        """EMBED_TIMEOUT_MS in seconds, or the default for the configured embedder."""
        if self.embed_timeout_ms is not None:
            return self.embed_timeout_ms / 1000
        return 0.5 if self.embedding_provider == "local" else 1.5

    @property
    def upstream_configured(self) -> bool:
        """Whether the default provider can be called, so a miss can be answered."""
        return bool(
            {
                "groq": self.groq_api_key,
                "openai": self.openai_api_key,
                "anthropic": self.anthropic_api_key,
                "openai_compatible": self.openai_compatible_base_url,
            }[self.default_provider]
        )


_FIELDS = {field.encode_name for field in msgspec.structs.fields(Settings)}


def load_settings(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Read Settings from the environment (empty values count as unset); raise SettingsError."""
    env = os.environ if environ is None else environ
    raw: dict[str, object] = {name: env[name] for name in _FIELDS if env.get(name, "").strip()}
    if "LOG_LEVEL" in raw:
        raw["LOG_LEVEL"] = str(raw["LOG_LEVEL"]).upper()
    for lowered in ("EMBEDDING_PROVIDER", "SENTINEL_AUTH"):
        if lowered in raw:
            raw[lowered] = str(raw[lowered]).strip().lower()
    raw.update({key.upper(): value for key, value in overrides.items()})
    try:
        return msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(_explain(exc)) from None


def _explain(exc: msgspec.ValidationError) -> str:
    """Turn msgspec's message ("... - at `$.CACHE_TTL`") into "CACHE_TTL: ..."."""
    message = str(exc)
    head, sep, where = message.rpartition(" - at `$.")
    if sep:
        return f"{where.rstrip('`')}: {head}"
    return message
