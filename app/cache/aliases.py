"""Paraphrase aliases: a question once served semantically by an entry is served again by it
without an embedding.

After a semantic hit of question P on entry E, an alias key named by P's own entry id (the
hash of scope and normalized prompt, so it never crosses a scope or a tenant) holds E's id and
what the hit was judged with, and expires with E. The exact lookup reads the entry hash or, when
there is none, the alias and E's fields in the same round trip (one script). E gone (deleted,
expired) means no hit; E's `vetoed` questions and `min_similarity` still apply (Entry.serves).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
from redis.asyncio import Redis

from app.cache import keys
from app.cache.entry import ENTRY_FIELDS, Entry, from_values
from app.cache.wire import PackedScript


class Alias(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """Which entry served a paraphrase, and with what similarity and scores."""

    target: str
    similarity: float
    guard_score: float | None = None
    verifier_score: float | None = None


_RESPONSE = ENTRY_FIELDS.index("response") + 1  # Lua counts from 1

# KEYS: the entry, the alias. ARGV: the entry prefix. ENTRY_FIELDS are written into the script
# (a new field list is a new script and SHA): sent as 16 arguments per call, redis-py encoding
# them was ~15% of an exact hit's CPU. The target's key is built here from the alias (the server
# is a single Redis, not a cluster). Replies {fields} for the entry itself (whole or not),
# {fields of the target, alias} when an alias points on. `no-writes`: a read like HMGET, so
# under maxmemory it neither triggers evictions nor is refused (a script without flags counts
# as a write). Both scripts go out packed (cache/wire.py): redis-py's EVALSHA packs each argument
# and sends through a wait_for task of its own.
if not all(field.isidentifier() for field in ENTRY_FIELDS):  # nothing to quote in Lua
    raise RuntimeError("entry field names must be identifiers")
_FIELDS = ", ".join(f"'{field}'" for field in ENTRY_FIELDS)
_LOOKUP = f"""#!lua flags=no-writes
local fields = {{{_FIELDS}}}
local values = redis.call('HMGET', KEYS[1], unpack(fields))
if values[{_RESPONSE}] then return {{values}} end
local alias = redis.call('GET', KEYS[2])
if not alias then return {{values}} end
local target = string.match(alias, '^%["([0-9a-f]+)"')
if not target then return {{values}} end
return {{redis.call('HMGET', ARGV[1] .. target, unpack(fields)), alias}}
"""

# KEYS: pairs of (an alias, its target entry); ARGV: the aliases, one per pair. Each is written
# only while its target lives, for as long as the target has left. One call for every alias
# queued meanwhile: under load a round trip per alias cost the event loop more than the write.
_WRITE = """
local written = 0
for i = 1, #KEYS, 2 do
  local left = redis.call('PTTL', KEYS[i + 1])
  if left > 0 then
    redis.call('SET', KEYS[i], ARGV[(i + 1) / 2], 'PX', left)
    written = written + 1
  end
end
return written
"""

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Alias).decode


class Aliases:
    """Reads an entry or the entry its alias names (one script); writes aliases."""

    def __init__(self, redis: Redis, *, entry_prefix: str, alias_prefix: str) -> None:
        self._entry_prefix = entry_prefix
        self._alias_prefix = alias_prefix
        self._lookup = PackedScript(redis, _LOOKUP)
        self._write = PackedScript(redis, _WRITE)

    async def read(self, entry_id: str) -> tuple[Entry | None, Alias | None]:
        """The entry under `entry_id` (None if not whole), else (the alias's target, the alias);
        (None, None) when neither is there. Redis errors are the caller's to map."""
        reply: list[Any] = await self._lookup(
            [self._entry_prefix + entry_id, self._alias_prefix + entry_id], [self._entry_prefix]
        )
        if len(reply) == 1:
            return from_values(entry_id, reply[0]), None
        try:
            alias = _decode(reply[1])
        except msgspec.DecodeError:
            return None, None
        return from_values(alias.target, reply[0]), alias

    async def write(self, aliases: Mapping[str, Alias]) -> int:
        """Point each entry id's alias at its `target` for the target's remaining TTL, in one
        round trip; how many were written (a gone target's alias is not)."""
        if not aliases:
            return 0
        keys_: list[str] = []
        for entry_id, alias in aliases.items():
            keys_ += [
                self._alias_prefix + entry_id,
                keys.entry_key(self._entry_prefix, alias.target),
            ]
        written = await self._write(keys_, [_encode(a) for a in aliases.values()])
        return int(written)
