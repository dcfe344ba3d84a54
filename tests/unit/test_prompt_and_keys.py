from __future__ import annotations

import pytest

from app.cache import keys
from app.errors import EmptyPrompt
from app.service.prompt import Scope, normalize_prompt


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  What is Redis?  ", "What is Redis?"),
        ("What\tis\n\nRedis?", "What is Redis?"),
        ("What  is   Redis?", "What is Redis?"),
        ("Cafe\u0301", "Caf\u00e9"),  # NFD input becomes NFC
        ("What is REDIS?", "What is REDIS?"),  # case is kept
        ("\u00a0non-breaking\u2003spaces\u00a0", "non-breaking spaces"),
    ],
)
def test_normalize_prompt(raw: str, expected: str) -> None:
    assert normalize_prompt(raw) == expected


@pytest.mark.parametrize("raw", ["", "   ", "\n\t \u2003"])
def test_blank_prompt_is_refused(raw: str) -> None:
    with pytest.raises(EmptyPrompt):
        normalize_prompt(raw)


def test_scope_tag_is_stable_and_parameter_sensitive() -> None:
    base = Scope(model="m", max_tokens=100, temperature=0.0)
    assert base.tag() == Scope(model="m", max_tokens=100, temperature=0.0).tag()
    others = [
        Scope(model="other", max_tokens=100, temperature=0.0),
        Scope(model="m", max_tokens=101, temperature=0.0),
        Scope(model="m", max_tokens=100, temperature=0.7),
        Scope(model="m"),
    ]
    tags = {base.tag(), *(scope.tag() for scope in others)}
    assert len(tags) == 5
    assert all(tag.isalnum() for tag in tags)  # safe as a TAG value without escaping


def test_entry_id_depends_on_scope_and_prompt() -> None:
    first = keys.entry_id("scope-a", "What is Redis?")
    assert first == keys.entry_id("scope-a", "What is Redis?")
    assert first != keys.entry_id("scope-b", "What is Redis?")
    assert first != keys.entry_id("scope-a", "What is redis?")
    # the separator keeps (scope, prompt) pairs from colliding when concatenated
    assert keys.entry_id("ab", "c") != keys.entry_id("a", "bc")
    assert len(first) == 32


def test_names_include_embedder_dimension_and_dtype() -> None:
    prefix = keys.entry_prefix("MiniLM L6/v2", 384, "float16")
    assert prefix == "sentinel:minilm-l6-v2:384-float16:entry:"
    assert keys.index_name("MiniLM L6/v2", 384, "float16") == "sentinel-minilm-l6-v2-384-float16"
    assert keys.entry_prefix("MiniLM L6/v2", 384) == prefix  # float16 is the default
    assert keys.entry_prefix("jina-embeddings-v3", 1024) != prefix
    assert keys.entry_key(prefix, "abc") == "sentinel:minilm-l6-v2:384-float16:entry:abc"


def test_float32_keeps_the_names_it_had_and_no_prefix_covers_the_other() -> None:
    # the names FLOAT32 entries were written under before FLOAT16 existed
    old = keys.entry_prefix("MiniLM L6/v2", 384, "float32")
    assert old == "sentinel:minilm-l6-v2:384:entry:"
    assert keys.index_name("MiniLM L6/v2", 384, "float32") == "sentinel-minilm-l6-v2-384"
    new = keys.entry_prefix("MiniLM L6/v2", 384, "float16")
    # an index covers the keys starting with its prefix: neither covers the other's entries
    assert not new.startswith(old)
    assert not old.startswith(new)
    assert keys.index_name("MiniLM L6/v2", 384, "float16") != keys.index_name(
        "MiniLM L6/v2", 384, "float32"
    )
