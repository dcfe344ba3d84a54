"""The cache as one request uses it: every Redis call under a time budget, through the breaker.

Reads (the exact key, the KNN query, a candidate, the negative cache) get the lookup budget,
writes (the entry, metrics, a remembered failure) the write budget. A failed or late call
raises CacheBypassed and the request goes on without the cache; the bookkeeping calls
(metrics, remembering or reading a failure) swallow it and log instead. With everything
Redis-shaped here, QueryService reads as its decision.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar, Unpack

from app.cache.breaker import CacheBreaker
from app.cache.errors import CacheBypassed
from app.cache.metrics import Counts, MetricsStore, Outcome
from app.cache.negative import NegativeCache
from app.cache.store import CacheStore, Candidate, Entry
from app.errors import UpstreamError
from app.providers.embedders.base import Vector

log = logging.getLogger("sentinel.service")

T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestCache:
    """Store, metrics and negative cache behind one breaker and two budgets (seconds)."""

    store: CacheStore
    metrics: MetricsStore
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
        return await self.read(what, lambda: self.store.take_hit(entry_id, accept))

    async def nearest(self, vector: Vector, *, scope: str, k: int) -> list[Candidate]:
        """The k nearest entries of this scope, most similar first."""
        return await self.read(
            "semantic lookup", lambda: self.store.nearest(vector, scope=scope, k=k)
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

        await self.write("store", both)

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

    async def record(
        self, outcome: Outcome, *, latency_ms: float, **counts: Unpack[Counts]
    ) -> None:
        """Count a request in the metrics; losing one count never fails (or slows) it."""
        if self.breaker.is_open:
            return
        try:
            await self.write(
                "metrics", lambda: self.metrics.record(outcome, latency_ms=latency_ms, **counts)
            )
        except CacheBypassed as exc:
            self.skipped(exc, "metrics not recorded")

    async def read(self, what: str, operation: Callable[[], Awaitable[T]]) -> T:
        """A Redis read on the request path, within the lookup budget, through the breaker."""
        return await self.breaker.call(operation, budget=self.lookup_timeout, what=what)

    async def write(self, what: str, operation: Callable[[], Awaitable[T]]) -> T:
        """A Redis write on the request path, within the write budget, through the breaker."""
        return await self.breaker.call(operation, budget=self.write_timeout, what=what)

    def skipped(self, exc: CacheBypassed, what: str = "cache bypassed") -> None:
        """Log a skipped cache call (quietly while the breaker is open: it said so once)."""
        level = logging.DEBUG if self.breaker.is_open else logging.WARNING
        log.log(level, "%s: %s", what, exc.message)
