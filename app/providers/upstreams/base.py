"""The Upstream protocol: a prompt in, a completed answer out."""

from __future__ import annotations

from typing import Protocol

import msgspec


class Completion(msgspec.Struct, frozen=True, kw_only=True):
    """A successful answer from the LLM provider."""

    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int


class Upstream(Protocol):
    """An LLM provider that completes a single-turn prompt."""

    @property
    def name(self) -> str:
        """Provider name for health and logs (e.g. `groq`)."""
        ...

    @property
    def configured(self) -> bool:
        """Whether it can be called (an API key is set)."""
        ...

    @property
    def default_model(self) -> str:
        """The model used when a request names none."""
        ...

    async def complete(
        self,
        prompt: str,
        *,
        model: str,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> Completion:
        """Complete the prompt or raise an UpstreamError subclass; never returns a failure."""
        ...
