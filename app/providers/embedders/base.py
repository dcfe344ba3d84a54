"""The Embedder protocol: text in, L2-normalised float32 vectors out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]


class Embedder(Protocol):
    """Turns prompts into unit-length float32 vectors of a fixed dimension."""

    @property
    def id(self) -> str:
        """A short stable name (e.g. `minilm-l6-v2-int8`); part of the index name and key prefix."""
        ...

    @property
    def dimension(self) -> int:
        """Length of every vector this embedder returns."""
        ...

    async def embed(self, text: str) -> Vector:
        """Embed one text; shape (dimension,), unit length."""
        ...

    async def embed_many(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed several texts; shape (len(texts), dimension), rows of unit length."""
        ...

    async def aclose(self) -> None:
        """Release what the embedder holds (threads, sessions are not its own)."""
        ...
