"""Prompt normalization and the scope: what must match for a cached answer to be valid."""

from __future__ import annotations

import hashlib
import re
import unicodedata

import msgspec

from app.errors import EmptyPrompt

_WHITESPACE = re.compile(r"\s+")


def normalize_prompt(prompt: str) -> str:
    """Trim, collapse runs of whitespace to one space and apply Unicode NFC; case is kept."""
    normalized = _WHITESPACE.sub(" ", unicodedata.normalize("NFC", prompt)).strip()
    if not normalized:
        raise EmptyPrompt("prompt is empty or only whitespace")
    return normalized


class Scope(msgspec.Struct, frozen=True, kw_only=True):
    """The model and the parameters that change an answer; hits never cross scopes."""

    model: str
    max_tokens: int | None = None
    temperature: float | None = None

    def tag(self) -> str:
        """An opaque, stable string for this scope: a hash of its canonical JSON."""
        canonical = msgspec.json.encode(self, order="sorted")
        return hashlib.sha256(canonical).hexdigest()[:24]
