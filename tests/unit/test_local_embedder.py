"""LocalEmbedder: the real int8 MiniLM model and vendored tokenizer, no network."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from app.errors import EmbeddingError, StartupError
from app.providers.embedders.local import (
    BASE_MODEL,
    DEFAULT_MODEL,
    ONE_TEXT_PER_RUN,
    LocalEmbedder,
    _default_model_path,
    vendored_tokenizer_path,
)

PARAPHRASE = ("How do I stop being so hard on myself?", "How can I stop going hard on myself?")
UNRELATED = ("How do I stop being so hard on myself?", "What is the boiling point of mercury?")


@pytest.fixture(scope="module")
async def embedder() -> AsyncIterator[LocalEmbedder]:
    loaded = await LocalEmbedder.load()
    yield loaded
    await loaded.aclose()


def _corrupt_copy(source: Path, target: Path) -> Path:
    """Copy a file and flip one byte in the middle, keeping its size."""
    shutil.copyfile(source, target)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    return target


async def test_id_and_dimension(embedder: LocalEmbedder) -> None:
    assert embedder.id == DEFAULT_MODEL == "minilm-l6-sentinel-ft2-qint8"
    assert embedder.dimension == 384


async def test_base_model_loads_and_differs_from_the_tuned_one(embedder: LocalEmbedder) -> None:
    base = await LocalEmbedder.load(model=BASE_MODEL)
    try:
        assert base.id == "minilm-l6-v2-int8"
        tuned_vectors = await embedder.embed_many(list(PARAPHRASE))
        base_vectors = await base.embed_many(list(PARAPHRASE))
        # Same architecture and tokenizer, different weights: different vectors.
        assert float(tuned_vectors[0] @ base_vectors[0]) < 0.99
    finally:
        await base.aclose()


async def test_unknown_model_is_refused() -> None:
    with pytest.raises(StartupError, match="unknown local model"):
        await LocalEmbedder.load(model="no-such-model")


async def test_embed_shape_dtype_unit_norm(embedder: LocalEmbedder) -> None:
    vector = await embedder.embed("What is a semantic cache?")
    assert vector.shape == (384,)
    assert vector.dtype == np.float32
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    assert np.all(np.isfinite(vector))


async def test_embed_many_shape_and_unit_rows(embedder: LocalEmbedder) -> None:
    rows = await embedder.embed_many(["one", "two words", "and a third, longer text here"])
    assert rows.shape == (3, 384)
    assert rows.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)


async def test_embed_many_empty(embedder: LocalEmbedder) -> None:
    rows = await embedder.embed_many([])
    assert rows.shape == (0, 384)
    assert rows.dtype == np.float32


async def test_paraphrase_closer_than_unrelated(embedder: LocalEmbedder) -> None:
    a, b = await embedder.embed_many(PARAPHRASE)
    c, d = await embedder.embed_many(UNRELATED)
    paraphrase = float(a @ b)
    unrelated = float(c @ d)
    assert paraphrase > 0.8
    assert unrelated < 0.3
    assert paraphrase > unrelated + 0.4


async def test_deterministic(embedder: LocalEmbedder) -> None:
    first = await embedder.embed(PARAPHRASE[0])
    second = await embedder.embed(PARAPHRASE[0])
    np.testing.assert_array_equal(first, second)


async def test_batch_matches_single(embedder: LocalEmbedder) -> None:
    # Different lengths, so the batch is padded and the short rows see padding tokens.
    texts = [
        "hi",
        PARAPHRASE[0],
        "A much longer question about tuning an HNSW index for a semantic cache in Redis",
        PARAPHRASE[1],
        "",
    ]
    batch = await embedder.embed_many(texts)
    singles = np.stack([await embedder.embed(text) for text in texts])
    # The shipped model quantizes activations per run, so it runs each text alone: a text's
    # vector is the same bits whatever it is embedded with.
    assert embedder.id in ONE_TEXT_PER_RUN
    np.testing.assert_array_equal(batch, singles)


async def test_embed_many_keeps_input_order(embedder: LocalEmbedder) -> None:
    # More than one internal chunk (32) and lengths out of order, so sorting is exercised.
    texts = [f"question {'x ' * (i % 7)}number {i}" for i in range(70)]
    rows = await embedder.embed_many(texts)
    for index in (0, 5, 31, 32, 33, 69):
        np.testing.assert_allclose(rows[index], await embedder.embed(texts[index]), atol=1e-5)


async def test_concurrent_embeds_match_sequential(embedder: LocalEmbedder) -> None:
    texts = [f"concurrent question number {i} about caching" for i in range(16)]
    together = await asyncio.gather(*(embedder.embed(text) for text in texts))
    for text, vector in zip(texts, together, strict=True):
        np.testing.assert_allclose(vector, await embedder.embed(text), atol=1e-5)


async def test_long_text_is_truncated(embedder: LocalEmbedder) -> None:
    long_text = " ".join(f"word{i}" for i in range(3000))
    vector = await embedder.embed(long_text)
    assert vector.shape == (384,)
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    # Whatever follows the first 256 tokens cannot change the vector...
    base = "the cat sat on the mat " * 60  # 360 words, well past 256 tokens
    same = await embedder.embed(base + "and then quantum chromodynamics took over completely")
    np.testing.assert_allclose(await embedder.embed(base), same, atol=1e-6)
    # ...while text well inside the limit still does (the cut is not much earlier than 256).
    short = "the cat sat on the mat " * 30  # 180 words
    different = await embedder.embed(short + "and then quantum chromodynamics took over")
    assert float((await embedder.embed(short)) @ different) < 0.9999


async def test_wrong_model_sha256_refuses_to_start(tmp_path: Path) -> None:
    bad = _corrupt_copy(_default_model_path(DEFAULT_MODEL), tmp_path / "model.onnx")
    with pytest.raises(StartupError, match="sha256") as caught:
        await LocalEmbedder.load(model_path=bad)
    assert "\n" not in str(caught.value)
    assert str(bad) in str(caught.value)


async def test_wrong_tokenizer_sha256_refuses_to_start(tmp_path: Path) -> None:
    bad = _corrupt_copy(vendored_tokenizer_path(), tmp_path / "tokenizer.json")
    with pytest.raises(StartupError, match=r"tokenizer.*sha256"):
        await LocalEmbedder.load(tokenizer_path=bad)


async def test_missing_model_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="cannot read the model"):
        await LocalEmbedder.load(model_path=tmp_path / "absent.onnx")


async def test_closed_embedder_raises_embedding_error() -> None:
    local = await LocalEmbedder.load()
    await local.aclose()
    await local.aclose()  # idempotent
    with pytest.raises(EmbeddingError, match="closed"):
        await local.embed("anything")
    with pytest.raises(EmbeddingError, match="closed"):
        await local.embed_many(["anything"])
