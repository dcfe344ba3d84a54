"""JinaEmbedder against a real local HTTP server speaking Jina's v3 embeddings protocol."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import numpy as np
import numpy.typing as npt
import pytest

from app.errors import EmbeddingError
from app.providers.embedders.base import Embedder
from app.providers.embedders.jina import JinaEmbedder
from tests.fakes.jina_server import DIMS, FakeJina, Reply, raw_vector

pytestmark = pytest.mark.integration

KEY = "jina_test_secret_0123456789abcdef"
MODEL = "jina-embeddings-v3"


def unit(values: list[float]) -> npt.NDArray[np.float32]:
    array = np.asarray(values, dtype=np.float64)
    return (array / np.linalg.norm(array)).astype(np.float32)


@pytest.fixture
async def fake() -> AsyncIterator[FakeJina]:
    server = FakeJina()
    await server.start()
    yield server
    await server.stop()


def make(session: aiohttp.ClientSession, base_url: str, **options: Any) -> JinaEmbedder:
    """A JinaEmbedder with the test key, model and dimensions on `base_url`: a 5 s timeout and
    batches of 64 unless `options` say otherwise."""
    options = {"timeout": 5.0, "batch_size": 64, **options}
    return JinaEmbedder(
        session, api_key=KEY, base_url=base_url, model=MODEL, dimensions=DIMS, **options
    )


async def test_success_request_shape_and_unit_vector(
    fake: FakeJina, session: aiohttp.ClientSession
) -> None:
    embedder: Embedder = make(session, fake.base_url)

    vector = await embedder.embed("hello jina")

    assert embedder.id == "jina-embeddings-v3"
    assert embedder.dimension == DIMS
    assert vector.shape == (DIMS,)
    assert vector.dtype == np.float32
    np.testing.assert_allclose(vector, unit(raw_vector("hello jina")), atol=1e-6)
    assert fake.requests == [
        {
            "model": MODEL,
            "input": ["hello jina"],
            "task": "text-matching",
            "dimensions": DIMS,
            "embedding_type": "float",
        }
    ]
    assert fake.auth == [f"Bearer {KEY}"]


async def test_embed_many_batches_and_keeps_order(
    fake: FakeJina, session: aiohttp.ClientSession
) -> None:
    texts = [f"text number {i}" for i in range(5)]
    embedder = make(session, fake.base_url, batch_size=2)

    rows = await embedder.embed_many(texts)

    assert [request["input"] for request in fake.requests] == [texts[0:2], texts[2:4], texts[4:5]]
    assert rows.shape == (5, DIMS)
    assert rows.dtype == np.float32
    np.testing.assert_allclose(rows, np.stack([unit(raw_vector(t)) for t in texts]), atol=1e-6)


async def test_embed_many_empty_makes_no_request(
    fake: FakeJina, session: aiohttp.ClientSession
) -> None:
    rows = await make(session, fake.base_url).embed_many([])
    assert rows.shape == (0, DIMS)
    assert fake.requests == []


async def test_429_with_retry_after_then_success(
    fake: FakeJina, session: aiohttp.ClientSession
) -> None:
    fake.script = [Reply(status=429, body={"detail": "slow down"}, headers={"Retry-After": "0"})]

    vector = await make(session, fake.base_url).embed("retry me")

    assert len(fake.requests) == 2
    np.testing.assert_allclose(vector, unit(raw_vector("retry me")), atol=1e-6)


async def test_5xx_retried_at_most_three_times(
    fake: FakeJina, session: aiohttp.ClientSession
) -> None:
    fake.script = [Reply(status=503, body={"detail": "busy"}) for _ in range(5)]

    with pytest.raises(EmbeddingError, match=r"503.*after 3 attempts"):
        await make(session, fake.base_url).embed("always failing")

    assert len(fake.requests) == 3


async def test_401_is_not_retried_and_hides_the_key(
    fake: FakeJina, session: aiohttp.ClientSession
) -> None:
    # A server that echoes the key back must not get it into our message.
    fake.script = [Reply(status=401, body={"detail": f"Invalid API key Bearer {KEY}"})]

    with pytest.raises(EmbeddingError) as caught:
        await make(session, fake.base_url).embed("secret question")

    message = str(caught.value)
    assert "401" in message
    assert "JINA_API_KEY" in message
    assert KEY not in message
    assert KEY not in repr(caught.value.__cause__)
    assert len(fake.requests) == 1


async def test_wrong_dimension_is_an_error(fake: FakeJina, session: aiohttp.ClientSession) -> None:
    fake.script = [Reply(dims=DIMS + 1)]

    with pytest.raises(EmbeddingError, match=f"{DIMS + 1}-d embedding, expected {DIMS}"):
        await make(session, fake.base_url).embed("wrong size")


async def test_missing_row_is_an_error(fake: FakeJina, session: aiohttp.ClientSession) -> None:
    fake.script = [Reply(body={"data": [{"index": 0, "embedding": raw_vector("a")}]})]

    with pytest.raises(EmbeddingError, match="1 embeddings for 2 inputs"):
        await make(session, fake.base_url).embed_many(["a", "b"])


async def test_unreadable_body_is_an_error(fake: FakeJina, session: aiohttp.ClientSession) -> None:
    fake.script = [Reply(body="<html>not json</html>")]

    with pytest.raises(EmbeddingError, match="unreadable body"):
        await make(session, fake.base_url).embed("html please")


async def test_timeout_is_reported(fake: FakeJina, session: aiohttp.ClientSession) -> None:
    fake.script = [Reply(delay=2.0)]
    loop = asyncio.get_running_loop()
    started = loop.time()

    with pytest.raises(EmbeddingError, match="timed out"):
        await make(session, fake.base_url, timeout=0.3).embed("too slow")

    assert loop.time() - started < 1.5


async def test_connection_refused_is_retried_then_an_error(
    session: aiohttp.ClientSession,
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    embedder = make(session, f"http://127.0.0.1:{port}/v1")

    with pytest.raises(EmbeddingError, match="cannot reach Jina") as caught:
        await embedder.embed("nobody home")

    assert KEY not in str(caught.value)


async def test_aclose_leaves_the_session_open(
    fake: FakeJina, session: aiohttp.ClientSession
) -> None:
    embedder = make(session, fake.base_url)
    await embedder.aclose()
    assert not session.closed
