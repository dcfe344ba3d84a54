"""Key, index and id naming; the embedder's id and dimension keep vector spaces apart.

Also `text()`: keys and values come back from Redis as bytes or str depending on the client.
"""

from __future__ import annotations

import hashlib
import re

ROOT = "sentinel"
METRICS_KEY = f"{ROOT}:metrics"


def _slug(text: str) -> str:
    """Lower-case letters, digits and dashes only, so a name is safe in keys and index names."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def entry_prefix(embedder_id: str, dimension: int) -> str:
    """Key prefix of every entry hash made with this embedder, e.g. `sentinel:minilm:384:entry:`."""
    return f"{ROOT}:{_slug(embedder_id)}:{dimension}:entry:"


def alias_prefix(embedder_id: str, dimension: int) -> str:
    """Key prefix of paraphrase aliases (cache/aliases.py), beside the entries, not under their
    prefix (the index must not see them)."""
    return f"{ROOT}:{_slug(embedder_id)}:{dimension}:alias:"


def index_name(embedder_id: str, dimension: int) -> str:
    """RediSearch index name for this embedder, e.g. `sentinel-minilm-384`."""
    return f"{ROOT}-{_slug(embedder_id)}-{dimension}"


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
