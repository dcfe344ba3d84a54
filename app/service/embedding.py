"""The question's vector for the semantic layer, through the embedder's breaker, timed."""

from __future__ import annotations

import logging
import time

from app.errors import EmbeddingError
from app.observability.recorder import Recorder
from app.providers.embedders.base import Embedder, Vector
from app.providers.embedders.breaker import EmbedderBreaker

log = logging.getLogger("sentinel.service")


class Embedding:
    """Embeds questions; a failure or a late answer skips the semantic layer (None)."""

    def __init__(
        self, embedder: Embedder, breaker: EmbedderBreaker | None, metrics: Recorder
    ) -> None:
        self.embedder = embedder
        # None (offline replays): embeddings are awaited as long as they take.
        self.breaker = breaker
        self.metrics = metrics
        # Requests that skipped the semantic layer because embedding failed (this process).
        self.skipped = 0

    async def __call__(self, question: str) -> Vector | None:
        """The question's vector; None when the embedder failed or ran past its budget."""
        started = time.perf_counter()
        try:
            if self.breaker is None:
                return await self.embedder.embed(question)
            return await self.breaker.embed(question)
        except EmbeddingError as exc:
            self.skipped += 1
            # While the breaker is open every request skips: the breaker said so once.
            quiet = self.breaker is not None and self.breaker.is_open
            log.log(
                logging.DEBUG if quiet else logging.WARNING,
                "semantic layer skipped, answer kept for exact hits only: %s",
                exc.message,
            )
            return None
        finally:
            self.metrics.layer("embed", time.perf_counter() - started)
