"""The cache lookup, made once per request even when the fast path (app/api/fast.py) made it.

The fast path looks the request up (exact, alias, semantic) before Litestar sees it; without
a hit it hands the request on with what it found (`Prefetched`), and `QueryService.answer`
goes on from there (the provider, then storing with the vector already computed) instead of
asking Redis or the embedder a second time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from app.cache.aliases import Alias
from app.cache.errors import CacheBypassed
from app.cache.negative import RememberedFailure
from app.cache.store import Entry
from app.providers.embedders.base import Vector
from app.service.answers import Answer
from app.service.plan import Plan
from app.service.request_cache import RequestCache

Held = tuple[Entry, Alias | None]


class Found(NamedTuple):
    """What a lookup found: a hit, else the query's vector (for storing), whether the cache
    was bypassed (then no more cache reads for this request) and whether embedding failed
    (then it is not tried again for the store: the answer is kept for exact hits)."""

    hit: Answer | None = None
    vector: Vector | None = None
    bypass: bool = False
    embed_failed: bool = False


class Prefetched(NamedTuple):
    """What the fast path's lookup found for a request it handed on (no hit)."""

    entry_id: str
    started: float  # when the fast path started answering: the request's latency counts from it
    held: Held | None = None
    bypassed: CacheBypassed | None = None
    # The whole lookup when the fast path made it and found no hit (`answer` goes on from it),
    # or the failure remembered for this request that it raised instead.
    found: Found | None = None
    failure: RememberedFailure | None = None

    @property
    def exact(self) -> bool:
        """Whether the lookup found the entry itself (an exact hit), not through an alias."""
        return self.held is not None and self.held[1] is None


async def prefetch(
    cache: RequestCache, plan: Plan, accept: Callable[[Entry, Alias], bool], started: float
) -> Prefetched:
    """The exact lookup of a plan (an exact hit when `held` is an entry without an alias)."""
    try:
        found = await cache.exact_or_alias(plan.entry_id, accept)
    except CacheBypassed as exc:
        return Prefetched(plan.entry_id, started, bypassed=exc)
    return Prefetched(plan.entry_id, started, held=found)


async def held_entry(
    cache: RequestCache,
    plan: Plan,
    accept: Callable[[Entry, Alias], bool],
    prefetched: Prefetched | None = None,
) -> Held | None:
    """The entry under this id (or the one its paraphrase alias names), as the prefetch found
    it when there is one for this id; CacheBypassed when that lookup was bypassed."""
    if prefetched is None or prefetched.entry_id != plan.entry_id:
        return await cache.exact_or_alias(plan.entry_id, accept)
    if prefetched.bypassed is not None:
        raise prefetched.bypassed
    return prefetched.held
