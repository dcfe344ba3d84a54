"""Key, index and id naming; the embedder's id, dimension and vector dtype keep indexes apart.

Also `text()`: keys and values come back from Redis as bytes or str depending on the client.
"""

from __future__ import annotations

import hashlib
import re

from app.cache.vectors import DEFAULT_VECTOR_DTYPE, VectorDtype

ROOT = "sentinel"
METRICS_KEY = f"{ROOT}:metrics"


def _slug(text: str) -> str:
    """Lower-case letters, digits and dashes only, so a name is safe in keys and index names."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _space(dimension: int, dtype: VectorDtype) -> str:
    # FLOAT32 keeps the names it had before FLOAT16 existed, so VECTOR_DTYPE=float32 finds the
    # entries and index written then; any other dtype gets its own (an index's vector TYPE is
    # fixed at FT.CREATE, and its prefix must not cover hashes holding another byte layout).
    return str(dimension) if dtype == "float32" else f"{dimension}-{dtype}"


def entry_prefix(
    embedder_id: str, dimension: int, dtype: VectorDtype = DEFAULT_VECTOR_DTYPE
) -> str:
    """Key prefix of every entry hash made with this embedder and vector dtype, e.g.
    `sentinel:minilm:384-float16:entry:` (`sentinel:minilm:384:entry:` for float32)."""
    return f"{ROOT}:{_slug(embedder_id)}:{_space(dimension, dtype)}:entry:"


def index_name(embedder_id: str, dimension: int, dtype: VectorDtype = DEFAULT_VECTOR_DTYPE) -> str:
    """RediSearch index name for this embedder and vector dtype, e.g.
    `sentinel-minilm-384-float16` (`sentinel-minilm-384` for float32)."""
    return f"{ROOT}-{_slug(embedder_id)}-{_space(dimension, dtype)}"


def alias_prefix(
    embedder_id: str, dimension: int, dtype: VectorDtype = DEFAULT_VECTOR_DTYPE
) -> str:
    """Key prefix of paraphrase aliases (cache/aliases.py), beside the entries, not under their
    prefix (the index must not see them)."""
    return f"{ROOT}:{_slug(embedder_id)}:{_space(dimension, dtype)}:alias:"


def entry_id(scope: str, normalized_prompt: str) -> str:
    """The exact-layer id: a hash of scope and normalized prompt (the same question, same scope)."""
    digest = hashlib.sha256()
    digest.update(scope.encode())
    digest.update(b"\x00")
    digest.update(normalized_prompt.encode())
    return digest.hexdigest()[:32]


def question_digest(normalized_prompt: str) -> str:
    """A short digest of a question, for lists of questions an entry must not answer."""
    return hashlib.sha256(normalized_prompt.encode()).hexdigest()[:16]


def entry_key(prefix: str, entry_id: str) -> str:
    """Redis key of one entry hash."""
    return prefix + entry_id


def entry_id_of(prefix: str, key: bytes | str) -> str:
    """The entry id in an entry key (the inverse of entry_key)."""
    return text(key).removeprefix(prefix)


def text(value: bytes | str | None) -> str:
    """A Redis reply as str (bytes are UTF-8); "" for a missing one."""
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value
