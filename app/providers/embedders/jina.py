"""Jina's hosted embeddings (v3 API) over a shared aiohttp session, with bounded retries."""

from __future__ import annotations

import time
from collections.abc import Sequence

import aiohttp
import msgspec
import numpy as np
import numpy.typing as npt

from app.errors import EmbeddingError
from app.providers.embedders.base import Vector
from app.providers.retry import (
    DeadlineExceeded,
    RetriesExhausted,
    Retryable,
    parse_retry_after,
    with_retries,
)

MAX_ATTEMPTS = 3
_DETAIL_CHARS = 200


class _Request(msgspec.Struct, frozen=True):
    """Body of POST /embeddings."""

    model: str
    input: list[str]
    task: str
    dimensions: int
    embedding_type: str


class _Item(msgspec.Struct, frozen=True):
    """One vector of a response; `index` is its position in the request's input."""

    index: int
    embedding: list[float]


class _Response(msgspec.Struct, frozen=True):
    """The part of Jina's answer we use (usage and model are ignored)."""

    data: list[_Item]


class _ErrorBody(msgspec.Struct, frozen=True):
    """Jina's error answer, e.g. `{"detail": "..."}`."""

    detail: str | None = None


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(_Response)
_ERROR_DECODER = msgspec.json.Decoder(_ErrorBody)


class JinaEmbedder:
    """Embeds with Jina's API (`task=text-matching`); the HTTP session belongs to the caller."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        api_key: str,
        base_url: str,
        model: str,
        dimensions: int,
        timeout: float = 10.0,
        batch_size: int = 64,
    ) -> None:
        if dimensions <= 0 or batch_size <= 0 or timeout <= 0:
            raise ValueError("dimensions, batch_size and timeout must be positive")
        self._session = session
        self._api_key = api_key
        self._url = base_url.rstrip("/") + "/embeddings"
        self._model = model
        self._dimensions = dimensions
        self._timeout = timeout
        self._batch_size = batch_size
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }

    @property
    def id(self) -> str:
        """The model name, prefixed `jina-` if it lacks it (e.g. `jina-embeddings-v3`)."""
        return self._model if self._model.startswith("jina") else f"jina-{self._model}"

    @property
    def dimension(self) -> int:
        """The `dimensions` requested from Jina (Matryoshka truncation happens server-side)."""
        return self._dimensions

    async def embed(self, text: str) -> Vector:
        """Embed one text with one API call; shape (dimension,), unit length."""
        rows = await self._request([text])
        row: Vector = rows[0]
        return row

    async def embed_many(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed texts `batch_size` at a time (one API call each, each with its own deadline)."""
        result = np.empty((len(texts), self._dimensions), dtype=np.float32)
        # Sequential on purpose: parallel batches would only hit Jina's rate limit sooner.
        for start in range(0, len(texts), self._batch_size):
            chunk = list(texts[start : start + self._batch_size])
            result[start : start + len(chunk)] = await self._request(chunk)
        return result

    async def aclose(self) -> None:
        """Nothing to release: the session is the caller's."""

    async def _request(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """One logical call: up to 3 attempts inside `timeout` seconds; raise EmbeddingError."""
        body = _ENCODER.encode(
            _Request(
                model=self._model,
                input=texts,
                task="text-matching",
                dimensions=self._dimensions,
                embedding_type="float",
            )
        )

        async def attempt(remaining: float) -> bytes:
            return await self._post(body, remaining)

        try:
            raw = await with_retries(
                attempt, deadline=time.monotonic() + self._timeout, max_attempts=MAX_ATTEMPTS
            )
        except DeadlineExceeded:
            raise EmbeddingError(f"Jina embeddings timed out after {self._timeout:g} s") from None
        except RetriesExhausted as exc:
            raise EmbeddingError(f"Jina embeddings failed: {exc}") from None
        return self._parse(raw, len(texts))

    async def _post(self, body: bytes, remaining: float) -> bytes:
        """One HTTP attempt: the body on 2xx, Retryable on 429/5xx/connection errors."""
        try:
            async with self._session.post(
                self._url,
                data=body,
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=remaining),
            ) as response:
                payload = await response.read()
                status = response.status
                if status == 429:
                    raise Retryable(
                        "Jina answered 429 Too Many Requests",
                        retry_after=parse_retry_after(response.headers.get("Retry-After")),
                    )
                if status >= 500:
                    raise Retryable(f"Jina answered {status}")
                if status >= 400:
                    raise EmbeddingError(self._client_error(status, payload))
                if status != 200:
                    raise EmbeddingError(f"Jina answered unexpected status {status}")
                return payload
        except TimeoutError:
            # Includes aiohttp's socket timeouts; with_retries turns it into DeadlineExceeded.
            raise
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise Retryable(f"cannot reach Jina ({type(exc).__name__})") from None

    def _client_error(self, status: int, payload: bytes) -> str:
        """A one-line message for a 4xx: status, Jina's detail if any, never the API key."""
        message = f"Jina answered {status}"
        if status in (401, 403):
            message += "; check JINA_API_KEY"
        try:
            detail = _ERROR_DECODER.decode(payload).detail
        except (msgspec.DecodeError, msgspec.ValidationError):
            detail = None
        if detail:
            # A server may echo the request headers back; the key must not reach logs.
            detail = " ".join(detail.replace(self._api_key, "***").split())[:_DETAIL_CHARS]
            message += f": {detail}"
        return message

    def _parse(self, raw: bytes, count: int) -> npt.NDArray[np.float32]:
        """Decode and check a 200 body; rows in input order, L2-normalised float32."""
        try:
            items = _DECODER.decode(raw).data
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise EmbeddingError(f"Jina answered 200 with an unreadable body: {exc}") from None
        if sorted(item.index for item in items) != list(range(count)):
            raise EmbeddingError(
                f"Jina answered {len(items)} embeddings for {count} inputs (or bad indices)"
            )
        items = sorted(items, key=lambda item: item.index)
        for item in items:
            if len(item.embedding) != self._dimensions:
                raise EmbeddingError(
                    f"Jina answered a {len(item.embedding)}-d embedding, "
                    f"expected {self._dimensions} (check JINA_MODEL and JINA_DIMENSIONS)"
                )
        vectors = np.array([item.embedding for item in items], dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        if not np.all(np.isfinite(norms)) or np.any(norms == 0.0):
            raise EmbeddingError("Jina answered a zero or non-finite embedding")
        unit: npt.NDArray[np.float32] = (vectors / norms).astype(np.float32)
        return unit
