"""One cached answer and its Redis hash: one codec, derived from the Entry struct.

The hash holds the fields of Entry but `id` (the last part of its key), under the struct's
field names; numbers are stored as their text. Reading a hash back converts that text with
the same struct, so a field added to Entry is written, read and listed without another edit.
A field at its default is not written (reading fills the default back in): most entries have
no tool calls, tenant or verdicts, and each hash field costs about 60 bytes of Redis memory.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec
from redis.typing import EncodableT, FieldT

from app.cache.keys import text


class Entry(msgspec.Struct, frozen=True, kw_only=True):
    """One cached answer."""

    id: str
    prompt: str
    response: str
    model: str
    scope: str
    created_at: float
    hits: int
    prompt_tokens: int
    completion_tokens: int
    # The answer's tool calls as OpenAI-shaped JSON, "" when it has none.
    tool_calls: str = ""
    finish_reason: str = "stop"
    # Who answered (after any fallback); "" for entries written before providers were named.
    provider: str = ""
    # For admin listing and scope invalidation (both TAG fields of the index): the API key's
    # tenant ("" when open) and the `provider/model` the client asked for.
    tenant: str = ""
    model_id: str = ""
    # What live verification and feedback learned (see service/audit.py): this entry serves
    # a semantic match only at or above `min_similarity`, and never the questions whose
    # digests `vetoed` lists (space-separated), whatever their similarity.
    min_similarity: float = 0.0
    vetoed: str = ""

    def serves(self, question_digest: str, similarity: float) -> bool:
        """Whether this entry may answer that question semantically at that similarity."""
        return similarity >= self.min_similarity and question_digest not in self.vetoed.split()


_STORED = tuple(field for field in msgspec.structs.fields(Entry) if field.name != "id")
_HASH_FIELD = {field.name: field.encode_name for field in _STORED}
# (attribute, hash field, default or NODEFAULT) for to_hash.
_WRITTEN = tuple((field.name, field.encode_name, field.default) for field in _STORED)

# The hash fields of an entry, in the struct's order: for HMGET and RETURN of FT.SEARCH.
ENTRY_FIELDS: tuple[str, ...] = tuple(_HASH_FIELD.values())


def hash_field(attribute: str) -> str:
    """The hash field an Entry attribute is stored under; KeyError if Entry has no such field."""
    return _HASH_FIELD[attribute]


def to_hash(entry: Entry) -> dict[FieldT, EncodableT]:
    """The hash fields of an entry that differ from their defaults, for HSET (after a DEL)."""
    mapping: dict[FieldT, EncodableT] = {}
    for name, stored_as, default in _WRITTEN:
        value = getattr(entry, name)
        if value != default:  # NODEFAULT equals no value: required fields are always written
            mapping[stored_as] = value
    return mapping


def from_hash(entry_id: str, row: Mapping[str, Any]) -> Entry | None:
    """The entry from a hash's fields (bytes or str), or None when they are not a whole entry.

    A field the hash lacks takes the struct's default (entries written before it existed);
    without a required one (`response`: the key expired or was never an entry) it is None.
    """
    return _convert(entry_id, ((name, row.get(name)) for name in ENTRY_FIELDS))


def from_values(entry_id: str, values: Sequence[Any]) -> Entry | None:
    """from_hash for the reply of an HMGET of ENTRY_FIELDS."""
    return _convert(entry_id, zip(ENTRY_FIELDS, values, strict=True))


def _convert(entry_id: str, pairs: Iterable[tuple[str, Any]]) -> Entry | None:
    fields = {name: text(value) for name, value in pairs if value is not None}
    try:
        return msgspec.convert({**fields, "id": entry_id}, Entry, strict=False)
    except msgspec.ValidationError:
        return None


def new_entry(
    *,
    entry_id: str,
    prompt: str,
    response: str,
    model: str,
    scope: str,
    prompt_tokens: int,
    completion_tokens: int,
    tool_calls: str = "",
    finish_reason: str = "stop",
    provider: str = "",
    tenant: str = "",
    model_id: str = "",
) -> Entry:
    """An entry as stored right after a successful upstream call."""
    return Entry(
        id=entry_id,
        prompt=prompt,
        response=response,
        model=model,
        scope=scope,
        created_at=time.time(),
        hits=0,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        tool_calls=tool_calls,
        finish_reason=finish_reason,
        provider=provider,
        tenant=tenant,
        model_id=model_id,
    )
