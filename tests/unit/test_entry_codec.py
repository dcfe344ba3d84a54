"""The entry codec: the hash layout stored entries already have, and reading it back."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
from redis.connection import Encoder

from app.cache import keys
from app.cache.entry import ENTRY_FIELDS, from_hash, from_values, new_entry, to_hash

# One entry's hash as Redis hands it back, in the layout Sentinel has always written: changing
# a name strands every stored entry. The first stores wrote only the first eight fields.
STORED = {
    "prompt": b"What is HNSW?",
    "response": b"A graph index.",
    "model": b"llama",
    "scope": b"scope-tag",
    "created_at": b"1733212345.125",
    "hits": b"7",
    "prompt_tokens": b"3",
    "completion_tokens": b"5",
    "tool_calls": b'[{"id": "call_1"}]',
    "finish_reason": b"tool_calls",
    "provider": b"groq",
    "tenant": b"acme",
    "model_id": b"groq/llama",
    # Added with live verification: an entry's own floor and the questions it must not answer.
    "min_similarity": b"0.0",
    "vetoed": b"",
}


def encoded(mapping: Mapping[Any, Any]) -> dict[str, bytes]:
    """What HSET stores for a mapping: each value as redis-py encodes it."""
    encoder = Encoder("utf-8", "strict", decode_responses=False)
    return {str(name): encoder.encode(value) for name, value in mapping.items()}


def test_a_stored_hash_reads_back_and_is_written_out_the_same() -> None:
    assert list(STORED) == list(ENTRY_FIELDS)
    entry = from_hash("abc", STORED)
    assert entry is not None
    assert (entry.id, entry.prompt, entry.created_at, entry.hits) == (
        "abc",
        "What is HNSW?",
        1733212345.125,
        7,
    )
    assert (entry.finish_reason, entry.tenant, entry.model_id) == (
        "tool_calls",
        "acme",
        "groq/llama",
    )
    # same names, same order, same bytes; no `id`, nor the fields at their defaults
    assert encoded(to_hash(entry)) == {
        name: value for name, value in STORED.items() if name not in ("min_similarity", "vetoed")
    }
    assert from_values("abc", [STORED[name] for name in ENTRY_FIELDS]) == entry
    as_text = {name: value.decode() for name, value in STORED.items()}
    assert from_hash("abc", {**as_text, "id": "ignored", "payload": None}) == entry


def test_an_entry_of_the_first_stores_takes_the_newer_fields_defaults() -> None:
    first = {name: STORED[name] for name in ENTRY_FIELDS[:8]}
    entry = from_hash("abc", first)
    assert entry is not None
    assert (entry.prompt, entry.hits, entry.completion_tokens) == ("What is HNSW?", 7, 5)
    assert (entry.tool_calls, entry.finish_reason, entry.provider, entry.tenant) == (
        "",
        "stop",
        "",
        "",
    )


def test_fields_at_their_defaults_are_not_written_and_read_back_the_same() -> None:
    plain = new_entry(
        entry_id="abc",
        prompt="p",
        response="r",
        model="m",
        scope="s",
        prompt_tokens=0,
        completion_tokens=0,
    )
    written = to_hash(plain)
    # the required fields always (a zero count too), none of the defaulted ones
    assert list(written) == [
        "prompt",
        "response",
        "model",
        "scope",
        "created_at",
        "hits",
        "prompt_tokens",
        "completion_tokens",
    ]
    assert from_hash("abc", encoded(written)) == plain
    assert from_values("abc", [encoded(written).get(name) for name in ENTRY_FIELDS]) == plain
    disputed = msgspec.structs.replace(plain, min_similarity=0.93, vetoed="d1 d2", tenant="t")
    assert {"min_similarity", "vetoed", "tenant"} <= set(to_hash(disputed))
    assert from_hash("abc", encoded(to_hash(disputed))) == disputed


def test_what_is_not_a_whole_entry_reads_as_none() -> None:
    assert from_values("gone", [None] * len(ENTRY_FIELDS)) is None  # HMGET of a missing key
    assert from_hash("half", {"hits": b"3"}) is None  # a count without its entry
    assert from_hash("abc", {**STORED, "prompt_tokens": b"many"}) is None


def test_text_and_entry_ids_from_keys() -> None:
    assert keys.text(b"caf\xc3\xa9") == "café"
    assert keys.text("plain") == "plain"
    assert keys.text(None) == ""
    prefix = keys.entry_prefix("minilm", 384)
    key = keys.entry_key(prefix, "abc")
    assert keys.entry_id_of(prefix, key) == "abc"
    assert keys.entry_id_of(prefix, key.encode()) == "abc"
