"""Answers as streams: a provider's pieces assembled into one answer, a cached one replayed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from app.providers.upstreams.base import ChatDelta, ChatMessage, ChatResult
from app.service.answers import Answer

# A cached answer is replayed as a stream in pieces of about this many characters.
REPLAY_CHUNK_CHARS = 64


class Assembler:
    """Builds the whole answer from a stream's deltas (tool-call pieces merged by index)."""

    def __init__(self, first: ChatDelta) -> None:
        self.text: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.usage = (0, 0)
        self.model = ""
        self.provider = first.provider or ""
        self.add(first)

    def add(self, delta: ChatDelta) -> None:
        if delta.content:
            self.text.append(delta.content)
        for piece in delta.tool_calls or ():
            call = self.calls.setdefault(
                int(piece.get("index", 0)),
                {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
            )
            call["id"] = piece.get("id") or call["id"]
            call["type"] = piece.get("type") or call["type"]
            function = piece.get("function") or {}
            call["function"]["name"] += function.get("name") or ""
            call["function"]["arguments"] += function.get("arguments") or ""
        if delta.finish_reason:
            self.finish_reason = delta.finish_reason
        if delta.usage:
            self.usage = delta.usage
        if delta.model:
            self.model = delta.model

    def result(self, requested_model: str) -> ChatResult | None:
        """The answer, or None when the stream carried no text, no tool call or no finish."""
        text = "".join(self.text)
        calls = [self.calls[i] for i in sorted(self.calls)]
        if self.finish_reason is None or not (text or calls):
            return None
        return ChatResult(
            message=ChatMessage(role="assistant", content=text or None, tool_calls=calls or None),
            finish_reason=self.finish_reason,
            model=self.model or requested_model.partition("/")[2] or requested_model,
            prompt_tokens=self.usage[0],
            completion_tokens=self.usage[1],
            provider=self.provider,
        )


async def replay(answer: Answer) -> AsyncIterator[ChatDelta]:
    """A cached answer as a stream: role, text in pieces, tool calls, finish, usage."""
    yield ChatDelta(role="assistant", model=answer.model, provider=answer.provider)
    text = answer.response
    for start in range(0, len(text), REPLAY_CHUNK_CHARS):
        yield ChatDelta(content=text[start : start + REPLAY_CHUNK_CHARS])
    if answer.tool_calls:
        yield ChatDelta(tool_calls=[{"index": i, **c} for i, c in enumerate(answer.tool_calls)])
    yield ChatDelta(finish_reason=answer.finish_reason)
    yield ChatDelta(usage=(answer.usage.prompt_tokens, answer.usage.completion_tokens))
