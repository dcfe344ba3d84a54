"""The circuit breaker between the request path and Redis (see app/breaker.py).

Every cache operation a request makes runs through `CacheBreaker.call` with a time budget. A
failure (connection refused or reset, LOADING, a reply error) or an overrun counts; refused,
late and failed calls raise CacheBypassed, and the request goes on without the cache. The
probe PINGs Redis, then checks the index and recreates it if Redis came back empty.

An error saying the index is missing opens the breaker at once whatever the count: lookups on
the exact key still work then, so the failures would never be consecutive, and only the
probe repairs the index.
"""

from __future__ import annotations

from app.breaker import CircuitBreaker
from app.cache.errors import CacheBypassed, needs_repair
from app.errors import CacheUnavailable, SentinelError


class CacheBreaker(CircuitBreaker):
    """Counts consecutive Redis failures; open, it refuses calls until its probe succeeds."""

    subject = "Redis"
    bypassed = "the cache is bypassed"
    failures = (CacheUnavailable,)

    def refusal(self, message: str) -> SentinelError:
        """CacheBypassed: the request goes on without the cache."""
        return CacheBypassed(message)

    def late(self, what: str, budget: float) -> str:
        """A Redis call cut at its budget."""
        return f"{what} skipped: Redis did not answer in time"

    def needs_repair(self, exc: BaseException) -> bool:
        """A missing index opens the breaker at once (only the probe recreates it)."""
        return needs_repair(exc)
