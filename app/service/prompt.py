"""Prompt normalization and the scope: what must match for a cached answer to be valid."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Any

import msgspec

from app.errors import EmptyPrompt

_WHITESPACE = re.compile(r"\s+")


def normalize_prompt(prompt: str) -> str:
    """Trim, collapse runs of whitespace to one space and apply Unicode NFC; case is kept."""
    normalized = _WHITESPACE.sub(" ", unicodedata.normalize("NFC", prompt)).strip()
    if not normalized:
        raise EmptyPrompt("prompt is empty or only whitespace")
    return normalized


class Scope(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Everything but the last question that changes an answer; hits never cross scopes.

    `model` is the routed `provider/model` id the client asked for; `context` holds the
    system/developer messages and the earlier turns. A single prompt (/v1/query) and a chat
    request with one user message and the same parameters share a scope: upstream they are
    the same request.
    """

    model: str
    # Who asked (the API key's tenant; "" when Sentinel runs open) and the sub-scope they chose
    # (X-Sentinel-Namespace): entries never serve another tenant or namespace.
    tenant: str = ""
    namespace: str = ""
    context: tuple[ContextMessage, ...] = ()
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] | None = None
    seed: int | None = None
    tools: Any = None
    tool_choice: Any = None
    response_format: Any = None

    def tag(self) -> str:
        """An opaque, stable string for this scope: a hash of its canonical JSON."""
        canonical = msgspec.json.encode(self, order="deterministic")
        return hashlib.sha256(canonical).hexdigest()[:24]


class ContextMessage(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A message of the scope, whitespace-normalized so formatting noise does not split scopes."""

    role: str
    content: str | None = None
    name: str | None = None
    tool_calls: Any = None
    tool_call_id: str | None = None


def normalize_text(text: str | None) -> str | None:
    """normalize_prompt for context messages: may be empty or None (e.g. a tool-call turn)."""
    if text is None:
        return None
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFC", text)).strip()
