"""Groq (or any OpenAI-compatible API) as the upstream that answers cache misses."""

from __future__ import annotations

import aiohttp

from app.providers.upstreams.openai_compat import OpenAICompatProvider

NOT_CONFIGURED = (
    "No upstream LLM is configured, so a cache miss cannot be answered: set GROQ_API_KEY "
    "(and optionally GROQ_BASE_URL and GROQ_MODEL to use any OpenAI-compatible API)"
)


class GroqUpstream(OpenAICompatProvider):
    """Answers chats, whole or streamed, through Groq's OpenAI-compatible `/chat/completions`."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        api_key: str | None,
        base_url: str,
        model: str,
        timeout: float,
        idle_timeout: float | None = None,
    ) -> None:
        super().__init__(
            session,
            name="groq",
            api_key=api_key,
            base_url=base_url,
            model=model,
            timeout=timeout,
            idle_timeout=idle_timeout,
            not_configured=NOT_CONFIGURED,
        )
