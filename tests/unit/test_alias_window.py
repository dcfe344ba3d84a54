"""Alias writes: at once when the hit is alone, after ALIAS_WINDOW when other searches are under
way (their aliases then share the write)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, cast

import pytest

from app.cache.aliases import Alias
from app.cache.store import new_entry
from app.service import semantic
from app.service.judge import Verdict
from app.service.semantic import SemanticLayer, SemanticMatch


class Writes:
    """RequestCache.alias, recorded: each call's entry ids."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def alias(self, aliases: Mapping[str, Alias]) -> None:
        self.calls.append(sorted(aliases))


def match() -> SemanticMatch:
    entry = new_entry(
        entry_id="e" * 64, prompt="q", response="a", model="m", scope="s",
        prompt_tokens=1, completion_tokens=1,
    )  # fmt: skip
    return SemanticMatch(entry, 0.93, Verdict(serve=True, guard_score=0.9))


def layer(writes: Writes) -> SemanticLayer:
    return SemanticLayer(cast(Any, writes), cast(Any, None), cast(Any, None), top_k=5)


class Plan:
    def __init__(self, entry_id: str) -> None:
        self.entry_id = entry_id


async def test_an_alias_alone_is_written_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(semantic, "ALIAS_WINDOW", 30.0)
    writes = Writes()
    service = layer(writes)
    service.remember(cast(Any, Plan("p1")), match())
    await asyncio.wait_for(service.drain(), 1.0)  # not the 30 s window
    assert writes.calls == [["p1"]]


async def test_aliases_under_load_share_one_write(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(semantic, "ALIAS_WINDOW", 0.05)
    writes = Writes()
    service = layer(writes)
    service._searching = 3  # other requests' searches under way
    service.remember(cast(Any, Plan("p1")), match())
    await asyncio.sleep(0.01)
    assert writes.calls == []  # waiting for the others
    service.remember(cast(Any, Plan("p2")), match())
    service.remember(cast(Any, Plan("p3")), match())
    await asyncio.wait_for(service.drain(), 1.0)
    assert writes.calls == [["p1", "p2", "p3"]]
