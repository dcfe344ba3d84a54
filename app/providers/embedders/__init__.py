"""Embedders: the Protocol, the offline MiniLM one and Jina's API, and a factory choosing one."""

from __future__ import annotations

import aiohttp

from app.providers.embedders.base import Embedder, Vector
from app.settings import Settings

__all__ = ["Embedder", "Vector", "build_embedder"]


async def build_embedder(settings: Settings, session: aiohttp.ClientSession) -> Embedder:
    """The embedder EMBEDDING_PROVIDER names; the local one is loaded (and verified) here."""
    if settings.embedding_provider == "jina":
        # Imported here so a Jina deployment never loads onnxruntime, and vice versa.
        from app.providers.embedders.jina import JinaEmbedder  # noqa: PLC0415

        # Settings.__post_init__ already refuses provider=jina without a key.
        assert settings.jina_api_key is not None
        return JinaEmbedder(
            session,
            api_key=settings.jina_api_key,
            base_url=settings.jina_base_url,
            model=settings.jina_model,
            dimensions=settings.jina_dimensions,
        )
    from app.providers.embedders.local import LocalEmbedder  # noqa: PLC0415

    return await LocalEmbedder.load(model=settings.local_embedding_model)
