"""Routing `provider/model` ids to chat providers, with an ordered fallback chain."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence

import aiohttp
import msgspec

from app.errors import (
    UnknownModel,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from app.providers.retry import Retryable
from app.providers.upstreams.anthropic import AnthropicProvider
from app.providers.upstreams.base import ChatDelta, ChatProvider, ChatRequest, ChatResult
from app.providers.upstreams.openai_compat import OpenAICompatProvider
from app.settings import Settings, parse_chains

log = logging.getLogger(__name__)

# Provider defaults (base URLs, models) are Settings' field defaults, defined there alone;
# build_router falls back on them when called without settings (tests, bench).
_DEFAULTS = Settings()
# Groq is the default provider, so its message is the one a fresh install sees on a miss.
GROQ_NOT_CONFIGURED = (
    "No upstream LLM is configured, so a cache miss cannot be answered: set GROQ_API_KEY "
    "(and optionally GROQ_BASE_URL and GROQ_MODEL to use any OpenAI-compatible API)"
)

Chains = Mapping[str, Sequence[str]]


class ProviderRouter:
    """Picks the provider for a model id and falls back along a chain on transient failures.

    A model id is `provider/model` (`groq/llama-3.1-8b-instant`; the model part may hold more
    slashes) or a bare model for the default provider. A chain is keyed by a full model id or a
    provider name; its entries are `provider` (that provider's default model) or
    `provider/model`. Fallback happens only after a provider's own retries are exhausted on a
    rate limit, 5xx, timeout or unreachable host, and providers without a key are skipped.
    """

    def __init__(
        self,
        providers: Mapping[str, ChatProvider],
        default_provider: str,
        fallbacks: Chains | None = None,
        *,
        models: Chains | None = None,
    ) -> None:
        self._providers = dict(providers)
        if default_provider not in self._providers:
            raise ValueError(f"default provider {default_provider!r} is not one of {self._known()}")
        self._default = self._providers[default_provider]
        self._fallbacks = {key: list(chain) for key, chain in (fallbacks or {}).items()}
        for key, chain in self._fallbacks.items():
            for model_id in (key, *chain):
                if model_id.partition("/")[0] not in self._providers:
                    raise ValueError(
                        f"fallback {model_id!r} names no provider; known: {self._known()}"
                    )
        self._extra_models = {name: list(ids) for name, ids in (models or {}).items()}
        for name in self._extra_models:
            if name not in self._providers:
                raise ValueError(f"models for {name!r}: no such provider; known: {self._known()}")
        # Told of every provider call: (provider, status, seconds); the metrics' hook.
        self.observe: Callable[[str, str, float], None] = lambda provider, status, seconds: None

    @property
    def providers(self) -> Mapping[str, ChatProvider]:
        """Every provider by name, configured or not (for /health)."""
        return dict(self._providers)

    @property
    def default_provider(self) -> ChatProvider:
        """The provider for model ids without a prefix."""
        return self._default

    def resolve(self, model: str) -> tuple[ChatProvider, str]:
        """The provider and its own model name for a model id; UnknownModel if none."""
        prefix, slash, rest = model.partition("/")
        if not slash:
            provider, native = self._default, model
        elif prefix in self._providers:
            provider, native = self._providers[prefix], rest
        else:
            raise UnknownModel(
                f"model {model!r}: unknown provider {prefix!r}; use one of {self._known()} "
                f"as a prefix (e.g. `{self._default.name}/<model>`)"
            )
        native = native or provider.default_model
        if not native:
            raise UnknownModel(f"model {model!r} names no model and {provider.name} has no default")
        return provider, native

    def models(self) -> list[str]:
        """Routable `provider/model` ids: each configured provider's default, then extras."""
        ids: list[str] = []
        for name, provider in self._providers.items():
            if not provider.configured:
                continue
            for native in (provider.default_model, *self._extra_models.get(name, ())):
                model_id = f"{name}/{native}"
                if native and model_id not in ids:
                    ids.append(model_id)
        return ids

    async def chat(self, model: str, request: ChatRequest) -> ChatResult:
        """The first answer along the chain; `.provider` says who gave it."""
        failures: list[UpstreamError] = []
        for provider, native in self._chain(model):
            started = time.perf_counter()
            try:
                result = await provider.chat(msgspec.structs.replace(request, model=native))
            except UpstreamError as exc:
                self.observe(provider.name, exc.upstream_status, time.perf_counter() - started)
                self._give_up_unless_transient(exc, provider, failures)
                continue
            self.observe(provider.name, "200", time.perf_counter() - started)
            if result.provider != provider.name:
                result = msgspec.structs.replace(result, provider=provider.name)
            return result
        raise _chain_failed(failures)

    async def stream(self, model: str, request: ChatRequest) -> AsyncIterator[ChatDelta]:
        """The first stream along the chain that yields a delta; the first one names the provider.

        Once a delta has gone out, a failure is the caller's: the answer is half-delivered.
        """
        failures: list[UpstreamError] = []
        for provider, native in self._chain(model):
            deltas = provider.stream(msgspec.structs.replace(request, model=native))
            started = time.perf_counter()  # a stream is timed to its first piece
            try:
                first = await anext(deltas)
            except StopAsyncIteration:
                self.observe(provider.name, "bad_response", time.perf_counter() - started)
                raise UpstreamBadResponse(f"{provider.name} ended the stream at once") from None
            except UpstreamError as exc:
                self.observe(provider.name, exc.upstream_status, time.perf_counter() - started)
                await _aclose(deltas)
                self._give_up_unless_transient(exc, provider, failures)
                continue
            self.observe(provider.name, "200", time.perf_counter() - started)
            try:
                yield msgspec.structs.replace(first, provider=provider.name)
                async for delta in deltas:
                    yield delta
            finally:
                await _aclose(deltas)
            return
        raise _chain_failed(failures)

    def _chain(self, model: str) -> list[tuple[ChatProvider, str]]:
        """The requested provider first (configured or not: its error says what to set), then
        the configured fallbacks."""
        primary, native = self.resolve(model)
        chain = self._fallbacks.get(f"{primary.name}/{native}")
        if chain is None:
            chain = self._fallbacks.get(primary.name, [])
        steps = [(primary, native)]
        for entry in chain:
            name, _, fallback_model = entry.partition("/")
            provider = self._providers[name]  # names were checked at construction
            fallback_model = fallback_model or provider.default_model
            # A fallback without a key or a model cannot answer; skipping it beats failing.
            if provider.configured and fallback_model and (provider, fallback_model) not in steps:
                steps.append((provider, fallback_model))
        return steps

    def _give_up_unless_transient(
        self, exc: UpstreamError, provider: ChatProvider, failures: list[UpstreamError]
    ) -> None:
        """Re-raise a failure the next provider would not fix; otherwise note it and go on."""
        if not is_transient(exc):
            raise exc
        failures.append(exc)
        log.warning(
            "provider %s failed (%s); trying the next in the chain", provider.name, exc.code
        )

    def _known(self) -> str:
        return ", ".join(sorted(self._providers))


def is_transient(exc: UpstreamError) -> bool:
    """Whether another provider might succeed: rate limit, 5xx, timeout, unreachable."""
    if isinstance(exc, UpstreamRateLimited | UpstreamTimeout | UpstreamUnavailable):
        return True
    # A 5xx after retries is a plain UpstreamError raised from the last Retryable.
    return type(exc) is UpstreamError and isinstance(exc.__cause__, Retryable)


def _chain_failed(failures: list[UpstreamError]) -> UpstreamError:
    """The last failure, its message naming every provider that failed before it."""
    last = failures[-1]
    if len(failures) == 1:
        return last
    earlier = "; ".join(failure.message for failure in failures[:-1])
    error = type(last)(f"{last.message} (fallback; before it: {earlier})", headers=last.headers)
    error.__cause__ = last
    return error


async def _aclose(deltas: AsyncIterator[ChatDelta]) -> None:
    if isinstance(deltas, AsyncGenerator):
        await deltas.aclose()


def build_router(
    session: aiohttp.ClientSession,
    *,
    timeout: float,
    idle_timeout: float | None = None,
    groq_api_key: str | None = None,
    groq_base_url: str = _DEFAULTS.groq_base_url,
    groq_model: str = _DEFAULTS.groq_model,
    openai_api_key: str | None = None,
    openai_base_url: str = _DEFAULTS.openai_base_url,
    openai_model: str = _DEFAULTS.openai_model,
    anthropic_api_key: str | None = None,
    anthropic_base_url: str = _DEFAULTS.anthropic_base_url,
    anthropic_model: str = _DEFAULTS.anthropic_model,
    openai_compatible_base_url: str | None = None,
    openai_compatible_api_key: str | None = None,
    openai_compatible_model: str | None = None,
    default_provider: str = _DEFAULTS.default_provider,
    fallbacks: str | Chains | None = None,
    extra_models: str | Chains | None = None,
) -> ProviderRouter:
    """Every provider on the app's session, from plain settings values; ValueError if invalid."""

    def compatible(
        name: str,
        api_key: str | None,
        base_url: str | None,
        model: str,
        *,
        requires_key: bool = True,
        not_configured: str | None = None,
    ) -> OpenAICompatProvider:
        """An OpenAI-compatible provider: its name, key, base URL and default model."""
        return OpenAICompatProvider(
            session,
            name=name,
            api_key=api_key,
            base_url=base_url,
            model=model,
            timeout=timeout,
            idle_timeout=idle_timeout,
            requires_key=requires_key,
            not_configured=not_configured,
        )

    providers: dict[str, ChatProvider] = {
        "groq": compatible(
            "groq", groq_api_key, groq_base_url, groq_model, not_configured=GROQ_NOT_CONFIGURED
        ),
        "openai": compatible("openai", openai_api_key, openai_base_url, openai_model),
        "anthropic": AnthropicProvider(
            session,
            api_key=anthropic_api_key,
            base_url=anthropic_base_url,
            model=anthropic_model,
            timeout=timeout,
            idle_timeout=idle_timeout,
        ),
        "openai_compatible": compatible(
            "openai_compatible",
            openai_compatible_api_key,
            openai_compatible_base_url,
            openai_compatible_model or "",
            # Ollama and vLLM on a private network need no key.
            requires_key=False,
            not_configured=(
                "the openai_compatible provider is not configured: set "
                "OPENAI_COMPATIBLE_BASE_URL (and OPENAI_COMPATIBLE_API_KEY if the server needs one)"
            ),
        ),
    }
    return ProviderRouter(
        providers,
        default_provider,
        parse_chains(fallbacks) if isinstance(fallbacks, str | None) else fallbacks,
        models=parse_chains(extra_models, variable="EXTRA_MODELS", values_are_routes=False)
        if isinstance(extra_models, str | None)
        else extra_models,
    )
