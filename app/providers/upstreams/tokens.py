"""Token counts for providers that report none: estimated from the texts, never zero."""

from __future__ import annotations

import math
from collections.abc import Iterable

from app.providers.upstreams.base import ChatRequest

# Rough chars-per-token for English with BPE tokenizers; only used when `usage` is missing.
CHARS_PER_TOKEN = 4


def estimate_tokens(*texts: str | None) -> int:
    """ceil(characters / 4): the token count when a provider reports none."""
    return math.ceil(sum(len(text) for text in texts if text) / CHARS_PER_TOKEN)


def count_or_estimate(count: int | None, *texts: str | None) -> int:
    """The provider's count, or the estimate from the texts it counted."""
    return count if count is not None else estimate_tokens(*texts)


def prompt_texts(request: ChatRequest) -> Iterable[str | None]:
    """Every text the model reads, for estimating prompt tokens."""
    for message in request.messages:
        yield message.content
        for call in message.tool_calls or ():
            function = call.get("function")
            if isinstance(function, dict):
                yield str(function.get("arguments") or "")
