"""The circuit breaker between the request path and the embedder (see app/breaker.py).

Each embedding a request needs runs through `EmbedderBreaker.call` with a time budget
(EMBED_TIMEOUT_MS). A failure (the remote API's 5xx or timeout, an ONNX error) or an overrun
counts; refused, late and failed calls raise EmbeddingSkipped and the request goes on without
the semantic layer. A late call is abandoned, not waited for: a stuck ONNX run keeps its pool
thread, never the event loop or the request. The probe embeds a short text.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

from app.breaker import CircuitBreaker
from app.errors import EmbeddingError, EmbeddingSkipped, SentinelError
from app.providers.embedders.base import Embedder, Vector

PROBE_TEXT = "Is the embedder back?"


class EmbedderBreaker(CircuitBreaker):
    """Counts consecutive embedder failures; open, it refuses until a probe embedding works."""

    subject = "the embedder"
    bypassed = "the semantic layer is skipped"
    failures = (EmbeddingError,)

    def __init__(
        self,
        embedder: Embedder,
        *,
        budget: float,
        failure_threshold: int = 3,
        probe_interval: float = 1.0,
    ) -> None:
        probe: Callable[[], Awaitable[object]] = partial(embedder.embed, PROBE_TEXT)
        # A probe is on nobody's request path: it may take longer than a request's budget.
        super().__init__(
            probe,
            failure_threshold=failure_threshold,
            probe_interval=probe_interval,
            probe_timeout=max(budget, 2.0),
        )
        self.embedder = embedder
        self.budget = budget

    async def embed(self, text: str) -> Vector:
        """`text`'s vector within the budget; EmbeddingSkipped if refused, late or failed."""
        return await self.call(
            partial(self.embedder.embed, text), budget=self.budget, what="embedding"
        )

    def refusal(self, message: str) -> SentinelError:
        """EmbeddingSkipped: the request goes on without the semantic layer."""
        return EmbeddingSkipped(message)
