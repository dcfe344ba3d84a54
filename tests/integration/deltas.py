"""Helpers for tests of streamed provider answers (OpenAI-compatible and Anthropic alike)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from app.providers.upstreams.base import ChatDelta, ChatProvider, ChatRequest


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
