"""The cache as one request uses it: every Redis call under a time budget, through the breaker.

Reads (the exact key, the KNN query, a candidate, the negative cache) get the lookup budget,
writes (the entry, a remembered failure) the write budget. A failed or late call raises
CacheBypassed and the request goes on without the cache; the bookkeeping calls (remembering
or reading a failure) swallow it and log instead. Metrics are counted in process (the
Recorder flushes them in the background): no Redis call of their own. With everything
Redis-shaped here, QueryService reads as its decision.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from app.cache.aliases import Alias
from app.cache.breaker import CacheBreaker
from app.cache.errors import CacheBypassed
from app.cache.negative import NegativeCache
from app.cache.store import CacheStore, Candidate, Entry
from app.errors import UpstreamError
from app.observability.recorder import Layer, Recorder
from app.providers.embedders.base import Vector

log = logging.getLogger("sentinel.service")

T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestCache:
    """Store, metrics and negative cache behind one breaker and two budgets (seconds)."""

    store: CacheStore
    metrics: Recorder
    negative: NegativeCache | None
    breaker: CacheBreaker
    lookup_timeout: float
    write_timeout: float

    @property
    def remembers_failures(self) -> bool:
        """Whether provider failures are remembered (NEGATIVE_TTL > 0)."""
        return self.negative is not None and self.negative.enabled

    async def entry(
        self,
        entry_id: str,
        what: str = "exact lookup",
        accept: Callable[[Entry], bool] | None = None,
    ) -> Entry | None:
        """The entry under this id, counted as a hit; None if there is none (or it expired,
        or `accept` refuses it)."""
        # A semantic candidate's read is the semantic layer's Redis time, with its KNN query.
        layer: Layer = "exact_lookup" if accept is None else "knn"
        return await self.read(what, lambda: self.store.take_hit(entry_id, accept), layer=layer)

    def found(self, entry: Entry, question_digest: str, similarity: float) -> Entry | None:
        """An entry a KNN search read, counted as a hit if it serves this question at this
        similarity (Entry.serves); None if it refuses."""
        if not entry.serves(question_digest, similarity):
            return None
        self.store.count_hit(entry.id)
        return entry

    async def exact_or_alias(
        self, entry_id: str, accept: Callable[[Entry, Alias], bool]
    ) -> tuple[Entry, Alias | None] | None:
        """The entry under this id, else the one its paraphrase alias names if `accept` takes
        it (timed as the `alias` layer when it serves), counted as a hit; else None."""
        started = time.perf_counter()
        served_by_alias = False
        try:
            found = await self.read(
                "exact lookup", lambda: self.store.take_hit_or_alias(entry_id, accept)
            )
            served_by_alias = found is not None and found[1] is not None
            return found
        finally:
            layer: Layer = "alias" if served_by_alias else "exact_lookup"
            self.metrics.layer(layer, time.perf_counter() - started)

    async def alias(self, aliases: Mapping[str, Alias]) -> None:
        """Write paraphrase aliases, entry id → alias, in one round trip (off the request
        path: a failure is only logged)."""
        store = self.store
        try:
            await self.write("alias write", lambda: store.alias(aliases))
        except CacheBypassed as exc:
            self.skipped(exc, "aliases not written")

    async def nearest(
        self, vector: Vector, *, scope: str, k: int, floor: float | None = None
    ) -> list[Candidate]:
        """The k nearest entries of this scope, most similar first (only those at least `floor`
        similar: the others are not read)."""
        return await self.read(
            "semantic lookup",
            lambda: self.store.nearest(vector, scope=scope, k=k, floor=floor),
            layer="knn",
        )

    async def keep(self, entry: Entry, vector: Vector | None, *, ttl: int, store: bool) -> None:
        """Store the entry (when `store`) and forget a failure remembered for it, at once."""

        async def both() -> None:
            writes: list[Awaitable[None]] = []
            if store:
                writes.append(self.store.put(entry, vector, ttl=ttl))
            if self.negative is not None and self.negative.enabled:
                writes.append(self.negative.forget(entry.id))
            for outcome in await asyncio.gather(*writes, return_exceptions=True):
                if isinstance(outcome, BaseException):
                    raise outcome

        await self.write("store", both, layer="store")

    async def check_failure(self, entry_id: str) -> None:
        """Raise RememberedFailure for a failure remembered for this exact request."""
        negative = self.negative
        if negative is None or not negative.enabled:
            return
        try:
            await self.read("negative cache read", lambda: negative.check(entry_id))
        except CacheBypassed as exc:
            self.skipped(exc, "negative cache not read")

    async def remember_failure(self, entry_id: str, exc: UpstreamError) -> None:
        """Remember a provider failure for this exact request (NEGATIVE_TTL seconds)."""
        negative = self.negative
        if negative is None or not negative.enabled:
            return
        try:
            await self.write("negative cache write", lambda: negative.remember(entry_id, exc))
        except CacheBypassed as failure:
            self.skipped(failure, "failure not remembered")

    async def read(
        self, what: str, operation: Callable[[], Awaitable[T]], layer: Layer | None = None
    ) -> T:
        """A Redis read on the request path, within the lookup budget, through the breaker;
        timed as `layer` when given."""
        return await self._timed(
            layer, self.breaker.call(operation, budget=self.lookup_timeout, what=what)
        )

    async def write(
        self, what: str, operation: Callable[[], Awaitable[T]], layer: Layer | None = None
    ) -> T:
        """A Redis write on the request path, within the write budget, through the breaker."""
        return await self._timed(
            layer, self.breaker.call(operation, budget=self.write_timeout, what=what)
        )

    async def _timed(self, layer: Layer | None, call: Awaitable[T]) -> T:
        if layer is None:
            return await call
        started = time.perf_counter()
        try:
            return await call
        finally:
            self.metrics.layer(layer, time.perf_counter() - started)

    def skipped(self, exc: CacheBypassed, what: str = "cache bypassed") -> None:
        """Log a skipped cache call (quietly while the breaker is open: it said so once)."""
        level = logging.DEBUG if self.breaker.is_open else logging.WARNING
        log.log(level, "%s: %s", what, exc.message)
