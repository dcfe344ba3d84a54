"""Request bodies as the wire sees them; constraints here become 400s before any work."""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec

from app.errors import BadRequest
from app.service.plan import Ask

ONE_YEAR = 365 * 24 * 3600

# C0 control characters other than tab, newline and carriage return: never part of a real
# prompt, often a sign of a broken client or an injection attempt; refused, not stored.
_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def refuse_control_characters(text: str | None, param: str) -> None:
    """400 when a text holds control characters (tab, newline and CR are fine)."""
    if text and (found := _CONTROLS.search(text)):
        raise BadRequest(
            f"{param} contains the control character U+{ord(found.group()):04X}; "
            "remove it (tab, newline and carriage return are allowed)",
            param=param,
        )


class QueryRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of POST /v1/query."""

    prompt: Annotated[str, msgspec.Meta(min_length=1)]
    similarity_threshold: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] | None = None
    # The wrong-hit rate this request accepts (X-Sentinel-Max-Wrong-Hit-Rate's body form).
    max_wrong_hit_rate: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] | None = None
    ttl: Annotated[int, msgspec.Meta(gt=0, le=ONE_YEAR)] | None = None
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | None = None
    max_tokens: Annotated[int, msgspec.Meta(gt=0, le=1_000_000)] | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0.0, le=2.0)] | None = None
    stream: bool = False
    # The body forms of Cache-Control: no-cache / no-store and X-Sentinel-Namespace.
    no_cache: bool = False
    no_store: bool = False
    namespace: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._:-]{1,64}$")] | None = None

    def to_ask(self, *, tenant: str, header_controls: dict[str, Any]) -> Ask:
        """The request as a one-message chat; the body's cache controls beat the headers'."""
        controls = dict(header_controls)
        if self.no_cache:
            controls["read_cache"] = False
        if self.no_store:
            controls["write_cache"] = False
        if self.namespace is not None:
            controls["namespace"] = self.namespace
        if self.ttl is not None:
            controls["ttl"] = self.ttl
        if self.similarity_threshold is not None:
            controls["similarity_threshold"] = self.similarity_threshold
        if self.max_wrong_hit_rate is not None:
            controls["max_wrong_hit_rate"] = self.max_wrong_hit_rate
        return Ask.of_prompt(
            self.prompt,
            model=self.model,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            tenant=tenant,
            **controls,
        )
