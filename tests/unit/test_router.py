"""ProviderRouter: model ids to providers, fallback chains, with in-memory providers."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator

import aiohttp
import pytest

from app.errors import (
    BadRequest,
    UnknownModel,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamNotConfigured,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from app.providers.retry import Retryable
from app.providers.upstreams.base import (
    ChatDelta,
    ChatMessage,
    ChatProvider,
    ChatRequest,
    ChatResult,
)
from app.providers.upstreams.router import ProviderRouter, build_router, is_transient
from app.settings import parse_chains

REQUEST = ChatRequest(model="ignored", messages=[ChatMessage(role="user", content="hello")])

Outcome = str | Exception | list[ChatDelta | Exception]


def server_error(name: str = "groq") -> UpstreamError:
    """A 5xx after retries, the way the providers raise it: chained to the last Retryable."""
    error = UpstreamError(f"{name} returned HTTP 500 after 3 attempts")
    error.__cause__ = Retryable("HTTP 500")
    return error


class ScriptedProvider:
    """A ChatProvider that answers (or fails) from a script and records what it was asked."""

    def __init__(
        self,
        name: str,
        *,
        configured: bool = True,
        default_model: str = "default",
        outcomes: list[Outcome] | None = None,
    ) -> None:
        self.name = name
        self.configured = configured
        self.default_model = default_model
        self.outcomes: deque[Outcome] = deque(outcomes or [])
        self.requests: list[ChatRequest] = []
        self.closed_streams = 0

    def _next(self, request: ChatRequest) -> Outcome:
        self.requests.append(request)
        if not self.configured:
            raise UpstreamNotConfigured(f"set {self.name.upper()}_API_KEY")
        return self.outcomes.popleft() if self.outcomes else f"{self.name} says hi"

    async def chat(self, request: ChatRequest) -> ChatResult:
        outcome = self._next(request)
        if isinstance(outcome, Exception):
            raise outcome
        assert isinstance(outcome, str)
        return ChatResult(
            message=ChatMessage(role="assistant", content=outcome),
            finish_reason="stop",
            model=request.model,
            prompt_tokens=1,
            completion_tokens=3,
            provider="set-by-the-provider",
        )

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatDelta]:
        outcome = self._next(request)
        if isinstance(outcome, Exception):
            raise outcome
        if isinstance(outcome, str):
            outcome = [ChatDelta(role="assistant"), ChatDelta(content=outcome)]
            outcome.append(ChatDelta(finish_reason="stop", usage=(1, 3)))
        try:
            for item in outcome:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            self.closed_streams += 1


def router(
    *providers: ScriptedProvider,
    default: str = "groq",
    fallbacks: dict[str, list[str]] | None = None,
    models: dict[str, list[str]] | None = None,
) -> ProviderRouter:
    table: dict[str, ChatProvider] = {p.name: p for p in providers}
    return ProviderRouter(table, default, fallbacks or {}, models=models)


async def collect(deltas: AsyncIterator[ChatDelta]) -> list[ChatDelta]:
    return [delta async for delta in deltas]


async def drain(deltas: AsyncIterator[ChatDelta], into: list[ChatDelta]) -> None:
    """Like collect, but what arrived before a failure stays in `into`."""
    async for delta in deltas:
        into.append(delta)


# -- resolve -----------------------------------------------------------------------------------


def test_resolve_prefixed_bare_and_slashed_models() -> None:
    groq, openai = ScriptedProvider("groq"), ScriptedProvider("openai", default_model="gpt")
    routes = router(groq, openai)

    assert routes.resolve("groq/llama-3.1-8b-instant") == (groq, "llama-3.1-8b-instant")
    assert routes.resolve("openai/gpt-4o-mini") == (openai, "gpt-4o-mini")
    # Groq hosts models whose own names hold a slash: only the first segment routes.
    assert routes.resolve("groq/openai/gpt-oss-120b") == (groq, "openai/gpt-oss-120b")
    assert routes.resolve("llama-3.1-8b-instant") == (groq, "llama-3.1-8b-instant")
    assert routes.resolve("") == (groq, "default")
    assert routes.resolve("openai/") == (openai, "gpt")


def test_unknown_prefix_is_a_clear_400() -> None:
    routes = router(ScriptedProvider("groq"), ScriptedProvider("anthropic"))

    with pytest.raises(UnknownModel) as info:
        routes.resolve("meta-llama/llama-4-scout")

    assert isinstance(info.value, BadRequest)
    assert info.value.status_code == 400
    assert info.value.code == "MODEL_NOT_FOUND"
    assert "'meta-llama'" in info.value.message
    assert "anthropic, groq" in info.value.message


def test_a_provider_without_a_default_needs_a_model() -> None:
    routes = router(
        ScriptedProvider("groq"), ScriptedProvider("openai_compatible", default_model="")
    )

    with pytest.raises(UnknownModel, match="no default"):
        routes.resolve("openai_compatible/")
    assert routes.resolve("openai_compatible/llama3")[1] == "llama3"


def test_invalid_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="default provider 'nope'"):
        router(ScriptedProvider("groq"), default="nope")
    with pytest.raises(ValueError, match="'mistral' names no provider"):
        router(ScriptedProvider("groq"), fallbacks={"groq": ["mistral"]})
    with pytest.raises(ValueError, match="no such provider"):
        router(ScriptedProvider("groq"), models={"mistral": ["large"]})


def test_models_lists_configured_defaults_then_extras() -> None:
    routes = router(
        ScriptedProvider("groq", default_model="llama-3.1-8b-instant"),
        ScriptedProvider("openai", configured=False, default_model="gpt-4o-mini"),
        ScriptedProvider("openai_compatible", default_model=""),
        models={"groq": ["llama-3.3-70b-versatile", "llama-3.1-8b-instant"], "openai": ["gpt-4o"]},
    )

    assert routes.models() == ["groq/llama-3.1-8b-instant", "groq/llama-3.3-70b-versatile"]


# -- chat --------------------------------------------------------------------------------------


async def test_chat_goes_to_the_routed_provider_with_its_own_model_name() -> None:
    groq, openai = ScriptedProvider("groq"), ScriptedProvider("openai")
    routes = router(groq, openai, fallbacks={"groq": ["openai"]})

    result = await routes.chat("groq/llama-3.1-8b-instant", REQUEST)

    assert result.provider == "groq"
    assert result.message.content == "groq says hi"
    assert [r.model for r in groq.requests] == ["llama-3.1-8b-instant"]
    assert groq.requests[0].messages == REQUEST.messages
    assert openai.requests == []


@pytest.mark.parametrize(
    "failure",
    [
        UpstreamRateLimited("429"),
        UpstreamUnavailable("refused"),
        UpstreamTimeout("slow"),
        server_error(),
    ],
    ids=["rate-limited", "unavailable", "timeout", "5xx"],
)
async def test_transient_failure_falls_back_to_the_next_provider(failure: UpstreamError) -> None:
    groq = ScriptedProvider("groq", outcomes=[failure])
    openai = ScriptedProvider("openai", default_model="gpt-4o-mini")
    routes = router(groq, openai, fallbacks={"groq": ["openai"]})

    result = await routes.chat("groq/llama", REQUEST)

    assert result.provider == "openai"
    assert result.message.content == "openai says hi"
    # The fallback gets its own model: the client's model means nothing to it.
    assert [r.model for r in openai.requests] == ["gpt-4o-mini"]


@pytest.mark.parametrize(
    "failure",
    [
        UpstreamBadResponse("empty answer"),
        UpstreamError("groq rejected the request with HTTP 400"),
        BadRequest("`seed` is not supported"),
    ],
    ids=["bad-response", "4xx", "bad-request"],
)
async def test_failures_another_provider_would_not_fix_are_raised(failure: Exception) -> None:
    groq = ScriptedProvider("groq", outcomes=[failure])
    openai = ScriptedProvider("openai")
    routes = router(groq, openai, fallbacks={"groq": ["openai"]})

    with pytest.raises(type(failure)) as info:
        await routes.chat("groq/llama", REQUEST)

    assert info.value is failure
    assert openai.requests == []


async def test_unconfigured_primary_says_what_to_set_and_unusable_fallbacks_are_skipped() -> None:
    anthropic = ScriptedProvider("anthropic", configured=False)
    openai = ScriptedProvider("openai", configured=False)
    local = ScriptedProvider("openai_compatible", default_model="")  # no model to ask for
    groq = ScriptedProvider("groq", outcomes=[UpstreamRateLimited("429")])
    routes = router(
        groq,
        anthropic,
        openai,
        local,
        fallbacks={"groq": ["anthropic", "openai", "openai_compatible"]},
    )

    with pytest.raises(UpstreamNotConfigured, match="ANTHROPIC_API_KEY"):
        await routes.chat("anthropic/claude", REQUEST)
    with pytest.raises(UpstreamRateLimited):
        await routes.chat("groq/llama", REQUEST)

    assert len(anthropic.requests) == 1  # the direct request only, never as a fallback
    assert openai.requests == []
    assert local.requests == []


async def test_chain_order_model_entries_and_full_id_keys() -> None:
    groq = ScriptedProvider("groq", outcomes=[server_error()])
    openai = ScriptedProvider("openai", outcomes=[UpstreamTimeout("openai slow")])
    anthropic = ScriptedProvider("anthropic")
    routes = router(
        groq,
        openai,
        anthropic,
        fallbacks={
            "groq": ["anthropic"],
            "groq/llama-3.3-70b": ["openai/gpt-4o", "anthropic/claude-sonnet", "groq"],
        },
    )

    result = await routes.chat("groq/llama-3.3-70b", REQUEST)

    assert result.provider == "anthropic"
    assert [r.model for r in openai.requests] == ["gpt-4o"]
    assert [r.model for r in anthropic.requests] == ["claude-sonnet"]
    # `groq` (its default model) came after the answer; the full id's chain won over `groq`'s.
    assert [r.model for r in groq.requests] == ["llama-3.3-70b"]


async def test_when_every_provider_fails_the_last_error_names_the_earlier_ones() -> None:
    groq = ScriptedProvider("groq", outcomes=[server_error()])
    openai = ScriptedProvider("openai", outcomes=[UpstreamRateLimited("openai rate limited")])
    routes = router(groq, openai, fallbacks={"groq": ["openai"]})

    with pytest.raises(UpstreamRateLimited) as info:
        await routes.chat("groq/llama", REQUEST)

    assert "openai rate limited" in info.value.message
    assert "groq returned HTTP 500" in info.value.message


# -- stream ------------------------------------------------------------------------------------


async def test_stream_names_the_provider_on_its_first_delta() -> None:
    routes = router(ScriptedProvider("groq"))

    deltas = await collect(routes.stream("groq/llama", REQUEST))

    assert deltas[0].provider == "groq"
    assert [d.provider for d in deltas[1:]] == [None, None]
    assert "".join(d.content or "" for d in deltas) == "groq says hi"


async def test_stream_falls_back_before_the_first_delta() -> None:
    groq = ScriptedProvider("groq", outcomes=[UpstreamUnavailable("refused")])
    anthropic = ScriptedProvider("anthropic")
    routes = router(groq, anthropic, fallbacks={"groq": ["anthropic"]})

    deltas = await collect(routes.stream("groq/llama", REQUEST))

    assert deltas[0].provider == "anthropic"
    assert "".join(d.content or "" for d in deltas) == "anthropic says hi"
    assert [r.model for r in anthropic.requests] == ["default"]


async def test_stream_failure_after_a_delta_is_the_callers() -> None:
    broken: list[ChatDelta | Exception] = [
        ChatDelta(role="assistant"),
        ChatDelta(content="half an"),
        UpstreamUnavailable("groq stream was cut"),
    ]
    groq = ScriptedProvider("groq", outcomes=[broken])
    anthropic = ScriptedProvider("anthropic")
    routes = router(groq, anthropic, fallbacks={"groq": ["anthropic"]})
    received: list[ChatDelta] = []

    with pytest.raises(UpstreamUnavailable, match="cut"):
        await drain(routes.stream("groq/llama", REQUEST), received)

    assert [d.content for d in received] == [None, "half an"]
    assert anthropic.requests == []


async def test_stream_not_worth_a_fallback_is_raised() -> None:
    groq = ScriptedProvider("groq", outcomes=[UpstreamBadResponse("empty")])
    anthropic = ScriptedProvider("anthropic")
    routes = router(groq, anthropic, fallbacks={"groq": ["anthropic"]})

    with pytest.raises(UpstreamBadResponse):
        await collect(routes.stream("groq/llama", REQUEST))
    assert anthropic.requests == []


async def test_closing_the_routed_stream_closes_the_providers() -> None:
    groq = ScriptedProvider("groq")
    routes = router(groq)

    deltas = routes.stream("groq/llama", REQUEST)
    assert isinstance(deltas, AsyncGenerator)
    first = await anext(deltas)
    await deltas.aclose()

    assert first.role == "assistant"
    assert groq.closed_streams == 1


# -- helpers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (UpstreamRateLimited("x"), True),
        (UpstreamTimeout("x"), True),
        (UpstreamUnavailable("x"), True),
        (server_error(), True),
        (UpstreamError("HTTP 401"), False),
        (UpstreamBadResponse("x"), False),
        (UpstreamNotConfigured("x"), False),
    ],
)
def test_is_transient(error: UpstreamError, transient: bool) -> None:
    assert is_transient(error) is transient


def test_parse_chains() -> None:
    assert parse_chains(None) == {}
    assert parse_chains(" ") == {}
    assert parse_chains("groq=openai, anthropic ; openai=groq;") == {
        "groq": ["openai", "anthropic"],
        "openai": ["groq"],
    }
    assert parse_chains("groq/llama-3.3-70b=openai/gpt-4o") == {
        "groq/llama-3.3-70b": ["openai/gpt-4o"]
    }
    for bad in ("groq", "=openai", "groq="):
        with pytest.raises(ValueError, match="FALLBACKS"):
            parse_chains(bad)


async def test_build_router_wires_every_provider_from_plain_settings() -> None:
    async with aiohttp.ClientSession() as session:
        routes = build_router(
            session,
            timeout=5.0,
            groq_api_key="gsk_x",
            anthropic_api_key="sk-ant-x",
            openai_compatible_base_url="http://127.0.0.1:11434/v1",
            openai_compatible_model="llama3",
            default_provider="anthropic",
            fallbacks="anthropic=groq",
            extra_models="groq=llama-3.3-70b-versatile",
        )
        with pytest.raises(ValueError, match="default provider"):
            build_router(session, timeout=5.0, default_provider="mistral")
        with pytest.raises(ValueError, match="FALLBACKS"):
            build_router(session, timeout=5.0, fallbacks="groq")

    configured = {name: p.configured for name, p in routes.providers.items()}
    assert configured == {
        "groq": True,
        "openai": False,
        "anthropic": True,
        # A keyless local server (Ollama, vLLM) is configured by its base URL alone.
        "openai_compatible": True,
    }
    assert routes.default_provider.name == "anthropic"
    assert routes.resolve("claude-haiku-4-5")[0].name == "anthropic"
    assert routes.models() == [
        "groq/llama-3.1-8b-instant",
        "groq/llama-3.3-70b-versatile",
        "anthropic/claude-haiku-4-5",
        "openai_compatible/llama3",
    ]
    for name, provider in routes.providers.items():
        assert provider.name == name
