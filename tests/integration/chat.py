"""Helpers for tests of chat providers (OpenAI-compatible and Anthropic alike): each provider
built against its local fake, what the tests ask, and how they read the answers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import aiohttp

from app.providers.upstreams.anthropic import AnthropicProvider
from app.providers.upstreams.base import (
    ChatDelta,
    ChatMessage,
    ChatProvider,
    ChatRequest,
    ChatResult,
)
from app.providers.upstreams.openai_compat import OpenAICompatProvider
from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.openai_server import FakeOpenAI

OPENAI_KEY = "sk-test-0123456789abcdef"
OPENAI_MODEL = "fake-model"
ANTHROPIC_KEY = "sk-ant-test-0123456789abcdef"
ANTHROPIC_MODEL = "claude-test"
QUESTION = "What is the capital of France?"
IDLE = 0.3  # the providers' idle timeout: how long a stream may go silent

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
    },
}
TIME_TOOL: dict[str, Any] = {"type": "function", "function": {"name": "get_time"}}


def openai_provider(
    session: aiohttp.ClientSession, base_url: str | None, *, name: str = "openai", **options: Any
) -> OpenAICompatProvider:
    """An OpenAI-compatible provider (by default the one named openai) on `base_url`."""
    settings = _settings(OPENAI_KEY, OPENAI_MODEL, options)
    return OpenAICompatProvider(session, name=name, base_url=base_url, **settings)


def anthropic_provider(
    session: aiohttp.ClientSession, base_url: str, **options: Any
) -> AnthropicProvider:
    """The Anthropic provider on `base_url`."""
    settings = _settings(ANTHROPIC_KEY, ANTHROPIC_MODEL, options)
    return AnthropicProvider(session, base_url=base_url, **settings)


def _settings(api_key: str, model: str, options: dict[str, Any]) -> dict[str, Any]:
    """What the tests give a provider unless `options` say otherwise (`api_key=None`: no key)."""
    return {"api_key": api_key, "model": model, "timeout": 2.0, "idle_timeout": IDLE, **options}


@dataclass(frozen=True)
class Upstream:
    """A chat provider on its local fake, and what the tests of every provider expect to differ."""

    fake: FakeOpenAI | FakeAnthropic
    build: Callable[..., ChatProvider]  # (session, base_url, **options), like openai_provider
    key_variable: str  # what a provider without its key names
    relayed: str  # the text a stream relays before a fault `after=2` strikes
    tool_call_id: str  # how the fake's tool call ids begin
    tool_preamble: str  # the text the fake says before it calls a tool

    @classmethod
    def on(cls, name: str, fake: FakeOpenAI | FakeAnthropic) -> Upstream:
        """The provider called `name` (openai, groq or anthropic) on `fake`."""
        if name == "anthropic":
            # Its stream opens the text block with an event of its own: two pieces hold one word.
            return cls(
                fake,
                anthropic_provider,
                "ANTHROPIC_API_KEY",
                relayed="answer ",
                tool_call_id="toolu_fake_",
                tool_preamble="Let me check.",
            )
        return cls(
            fake,
            partial(openai_provider, name=name),
            f"{name.upper()}_API_KEY",
            relayed="answer to: ",
            tool_call_id="call_fake_",
            tool_preamble="",
        )

    def provider(self, session: aiohttp.ClientSession, **options: Any) -> ChatProvider:
        """The provider on the fake's base URL, with the tests' settings unless `options` differ."""
        return self.build(session, self.fake.base_url, **options)


def ask(text: str = QUESTION, **options: Any) -> ChatRequest:
    """One user message and the given options; no model, so the provider's default answers."""
    return ChatRequest(model="", messages=[ChatMessage(role="user", content=text)], **options)


# Every provider calls get_weather for this one, whatever the question: tool_choice names it.
FORCED_TOOL_CALL = ask(
    "What is the weather in Oslo?",
    tools=[TIME_TOOL, WEATHER_TOOL],
    tool_choice={"type": "function", "function": {"name": "get_weather"}},
)


async def tool_round_trip(
    provider: ChatProvider, question: str, tool_choice: Any
) -> tuple[ChatResult, dict[str, Any], ChatResult]:
    """Ask with WEATHER_TOOL, then answer the one tool call it makes with "18C and sunny".

    Returns the call, the tool call in it, and the answer to the tool's result."""
    asked = ChatMessage(role="user", content=question)
    call = await provider.chat(
        ChatRequest(model="", messages=[asked], tools=[WEATHER_TOOL], tool_choice=tool_choice)
    )
    [tool_call] = call.message.tool_calls or []
    result = ChatMessage(role="tool", content="18C and sunny", tool_call_id=tool_call["id"])
    answered = await provider.chat(
        ChatRequest(model="", messages=[asked, call.message, result], tools=[WEATHER_TOOL])
    )
    return call, tool_call, answered


async def collect(deltas: AsyncIterator[ChatDelta]) -> list[ChatDelta]:
    return [delta async for delta in deltas]


async def drain(deltas: AsyncIterator[ChatDelta], into: list[ChatDelta]) -> None:
    """Like collect, but what arrived before a failure stays in `into`."""
    async for delta in deltas:
        into.append(delta)


async def answer(provider: ChatProvider, request: ChatRequest, *, stream: bool) -> object:
    """The whole answer, or every delta of the streamed one."""
    return await (collect(provider.stream(request)) if stream else provider.chat(request))


def text_of(deltas: list[ChatDelta]) -> str:
    return "".join(delta.content or "" for delta in deltas)
