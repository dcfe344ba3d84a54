"""The chat provider protocol and the types it speaks (OpenAI's Chat Completions semantics)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

import msgspec


class ChatMessage(
    msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True
):
    """One conversation turn; content parts are already flattened to text by the API layer."""

    role: str  # "system" | "developer" | "user" | "assistant" | "tool"
    content: str | None
    name: str | None = None
    # OpenAI's shape: {"id", "type": "function", "function": {"name", "arguments": "<JSON>"}}.
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class Sampling(
    msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True
):
    """What shapes an answer besides the messages; None is the provider's own default."""

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: list[str] | None = None
    seed: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    user: str | None = None


SAMPLING_FIELDS = tuple(field.name for field in msgspec.structs.fields(Sampling))


def sampling_of(struct: Sampling) -> dict[str, Any]:
    """The Sampling fields of a struct that has them, by name (to build another such struct)."""
    return {name: getattr(struct, name) for name in SAMPLING_FIELDS}


class ChatRequest(Sampling, frozen=True, kw_only=True):
    """A chat completion request; `model` is the provider's own name (routing prefix stripped).

    Every optional field left at None is left out of the provider's request.
    """

    model: str
    messages: list[ChatMessage]


class ChatResult(msgspec.Struct, frozen=True, kw_only=True):
    """A complete, non-empty assistant answer (text and/or tool calls)."""

    message: ChatMessage
    finish_reason: str  # "stop" | "length" | "tool_calls" | "content_filter"
    model: str
    prompt_tokens: int
    completion_tokens: int
    provider: str


class ChatDelta(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One streamed piece of an answer, already in OpenAI's chunk semantics."""

    content: str | None = None
    # OpenAI's delta shape: [{"index", "id"?, "type"?, "function": {"name"?, "arguments"}}].
    tool_calls: list[dict[str, Any]] | None = None
    role: str | None = None
    finish_reason: str | None = None
    usage: tuple[int, int] | None = None  # (prompt_tokens, completion_tokens)
    model: str | None = None
    # Set on the first delta of a stream: who is answering (the router may have fallen back).
    provider: str | None = None


class ChatProvider(Protocol):
    """An LLM provider that answers multi-turn chat requests, whole or streamed.

    Failures are UpstreamError subclasses. The provider's transient failures (rate limit, 5xx,
    timeout, unreachable) are UpstreamRateLimited, UpstreamTimeout, UpstreamUnavailable, or an
    UpstreamError whose `__cause__` is the last `Retryable`; the router falls back only on
    those. A request this provider cannot express raises BadRequest before any HTTP call.
    """

    @property
    def name(self) -> str:
        """Provider name used in model ids, logs and responses (e.g. `groq`)."""
        ...

    @property
    def configured(self) -> bool:
        """Whether it can be called (its key, or base URL, is set)."""
        ...

    @property
    def default_model(self) -> str:
        """The model used when a request names none ("" if there is none)."""
        ...

    async def chat(self, request: ChatRequest) -> ChatResult:
        """Answer with bounded retries; an empty answer is UpstreamBadResponse, never returned."""
        ...

    def stream(self, request: ChatRequest) -> AsyncIterator[ChatDelta]:
        """Stream the answer as deltas (an async generator).

        Retries happen only before the first byte of the body. Once streaming, a cut or
        stalled stream raises an UpstreamError; the iterator ends normally only after the
        provider's proper end with a finish_reason seen, and the last deltas carry usage.
        """
        ...
