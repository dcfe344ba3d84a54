"""CacheStore against a real Redis Stack: hash layout, HNSW index, scope filter, hit counting."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest
from redis.asyncio import Redis

from app.cache.aliases import Alias
from app.cache.store import CacheStore, Entry, new_entry

pytestmark = pytest.mark.integration

DIM = 8


def unit(values: list[float]) -> np.ndarray:
    vector = np.array(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


# FLOAT16 is what the service writes; FLOAT32 is what VECTOR_DTYPE=float32 (and every entry
# written before FLOAT16) holds: the store behaves the same with either.
@pytest.fixture(params=["float16", "float32"])
async def store(redis_url: str, request: pytest.FixtureRequest) -> AsyncIterator[CacheStore]:
    client = Redis.from_url(redis_url)
    cache = CacheStore(
        client,
        embedder_id="test-embedder",
        dimension=DIM,
        ef_runtime=50,
        vector_dtype=request.param,
    )
    assert await cache.ensure_index() is True
    assert await cache.ensure_index() is False  # idempotent: a second instance finds it
    yield cache
    await client.aclose()


def entry(entry_id: str, scope: str = "s1", prompt: str = "p") -> Entry:
    return new_entry(
        entry_id=entry_id,
        prompt=prompt,
        response=f"response {entry_id}",
        model="m",
        scope=scope,
        prompt_tokens=3,
        completion_tokens=5,
    )


async def test_put_then_take_hit_counts_hits(store: CacheStore) -> None:
    await store.put(entry("a"), unit([1, 0, 0, 0, 0, 0, 0, 0]), ttl=60)
    first = await store.take_hit("a")
    second = await store.take_hit("a")
    assert first is not None
    assert second is not None
    assert first.response == "response a"
    assert first.hits == 0  # counted in memory, written by the next flush
    await store.hits.flush()
    third = await store.take_hit("a")
    assert third is not None
    assert third.hits == 2
    assert (first.prompt_tokens, first.completion_tokens) == (3, 5)
    assert 0 < await store.ttl("a") <= 60
    assert await store.count() == 1


async def test_take_hit_on_a_missing_key_creates_nothing(store: CacheStore, redis_url: str) -> None:
    assert await store.take_hit("gone") is None
    await store.put(entry("brief"), unit([1, 0, 0, 0, 0, 0, 0, 0]), ttl=60)
    assert await store.take_hit("brief") is not None
    client = Redis.from_url(redis_url)
    (key,) = await client.keys("*brief*")
    await client.delete(key)  # expires between the hit and the flush
    await store.hits.flush()
    assert await client.keys("*gone*") == []
    assert await client.keys("*brief*") == []  # no half entry holding only `hits`
    await client.aclose()


async def test_hits_are_written_in_the_background(store: CacheStore) -> None:
    await store.put(entry("a"), unit([1, 0, 0, 0, 0, 0, 0, 0]), ttl=60)
    store.hits.start()
    try:
        for _ in range(3):
            assert await store.take_hit("a") is not None
        deadline = asyncio.get_running_loop().time() + 5
        stored = 0
        while asyncio.get_running_loop().time() < deadline:
            found = await store.take_hit("a")
            assert found is not None
            stored = found.hits
            if stored >= 3:
                break
            await asyncio.sleep(0.2)
        assert stored >= 3
    finally:
        await store.hits.aclose()


async def test_nearest_is_scoped_and_ordered(store: CacheStore) -> None:
    await store.put(entry("near"), unit([1, 0.1, 0, 0, 0, 0, 0, 0]), ttl=60)
    await store.put(entry("far"), unit([0, 1, 0, 0, 0, 0, 0, 0]), ttl=60)
    await store.put(entry("other", scope="s2"), unit([1, 0, 0, 0, 0, 0, 0, 0]), ttl=60)
    query = unit([1, 0, 0, 0, 0, 0, 0, 0])
    found = await store.nearest(query, scope="s1", k=3)
    assert [c.entry_id for c in found] == ["near", "far"]
    # half precision rounds the stored components (11 significant bits)
    tolerance = 1e-3 if store.vector_dtype == "float16" else 1e-5
    assert found[0].similarity == pytest.approx(
        float(query @ unit([1, 0.1, 0, 0, 0, 0, 0, 0])), abs=tolerance
    )
    assert found[1].similarity == pytest.approx(0.0, abs=tolerance)
    # A floor leaves out (unread) the neighbours less similar than it; the others as they were.
    assert await store.nearest(query, scope="s1", k=3, floor=0.5) == found[:1]
    exactly = await store.nearest(query, scope="s1", k=3, floor=found[0].similarity)
    assert exactly == found[:1]
    assert await store.nearest(query, scope="s1", k=3, floor=found[0].similarity + 1e-6) == []
    other = await store.nearest(query, scope="s2", k=3)
    assert [c.entry_id for c in other] == ["other"]
    assert other[0].similarity == pytest.approx(1.0, abs=tolerance)
    assert await store.nearest(query, scope="s3", k=3) == []


async def test_nearest_carries_whole_entries_and_escapes_the_scope(store: CacheStore) -> None:
    # Real scopes are tags like "t:tenant|m:groq/llama-3.1" with characters RediSearch's TAG
    # syntax treats specially: a prefix of one scope must not match another.
    odd = "t:a-b|m:groq/llama 3.1{x}"
    await store.put(entry("mine", scope=odd, prompt="q"), unit([1, 0, 0, 0, 0, 0, 0, 0]), ttl=60)
    await store.put(entry("prefix", scope="t:a-b"), unit([1, 0, 0, 0, 0, 0, 0, 0]), ttl=60)
    await store.put(entry("longer", scope=odd + "z"), unit([1, 0, 0, 0, 0, 0, 0, 0]), ttl=60)
    found = await store.nearest(unit([1, 0.2, 0, 0, 0, 0, 0, 0]), scope=odd, k=3)
    assert [c.entry_id for c in found] == ["mine"]
    read = found[0].entry
    assert read is not None  # the search read the entry: the hit needs no second read
    assert (read.id, read.prompt, read.scope, read.response) == ("mine", "q", odd, "response mine")
    assert read == await store.take_hit("mine")


async def test_aliases_are_written_together_and_only_to_live_entries(store: CacheStore) -> None:
    target, gone = "ab" * 32, "cd" * 32  # entry ids are hex digests (the lookup relies on it)
    await store.put(entry(target), unit([1, 0, 0, 0, 0, 0, 0, 0]), ttl=60)
    aliases = {
        "para-1": Alias(target=target, similarity=0.93, guard_score=0.9),
        "para-2": Alias(target=target, similarity=0.91),
        "para-3": Alias(target=gone, similarity=0.95),
    }
    assert await store.alias(aliases) == 2  # one round trip; a gone target gets none
    accept_all = lambda entry, alias: True  # noqa: E731
    for name in ("para-1", "para-2"):
        held = await store.take_hit_or_alias(name, accept_all)
        assert held is not None
        assert (held[0].id, held[1]) == (target, aliases[name])
    assert await store.take_hit_or_alias("para-3", accept_all) is None
    assert await store.alias({}) == 0


async def test_put_replaces_an_entry_and_refuses_a_wrong_dimension(store: CacheStore) -> None:
    await store.put(entry("a", prompt="old"), unit([1, 0, 0, 0, 0, 0, 0, 0]), ttl=60)
    await store.take_hit("a")
    await store.hits.flush()
    await store.put(entry("a", prompt="new"), unit([0, 1, 0, 0, 0, 0, 0, 0]), ttl=60)
    replaced = await store.take_hit("a")
    assert replaced is not None
    assert replaced.prompt == "new"
    assert replaced.hits == 0  # a replaced entry starts counting again
    with pytest.raises(ValueError, match="8 floats"):
        await store.put(entry("b"), np.ones(9, dtype=np.float32), ttl=60)
    assert await store.count() == 1


async def test_hit_counts_do_not_reindex_the_entry(store: CacheStore, redis_url: str) -> None:
    client = Redis.from_url(redis_url, protocol=2)
    config = await client.execute_command("FT.CONFIG", "GET", "PARTIAL_INDEXED_DOCS")
    assert config[0][1] == b"true"  # the embedded server loads RediSearch with it

    async def max_doc_id() -> int:
        info = await client.execute_command("FT.INFO", store.index_name)
        return int(dict(zip(info[::2], info[1::2], strict=True))[b"max_doc_id"])

    await store.put(entry("a"), unit([1, 0, 0, 0, 0, 0, 0, 0]), ttl=60)
    before = await max_doc_id()
    for _ in range(5):
        await store.take_hit("a")
    await store.hits.flush()
    assert await max_doc_id() == before  # the `hits` write did not re-index the entry
    found = await store.take_hit("a")
    assert found is not None
    assert found.hits == 5
    await client.aclose()


async def test_float16_index_serves_near_duplicates_with_their_cosine(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    half = CacheStore(client, embedder_id="test-embedder", dimension=384, ef_runtime=50)
    assert half.vector_dtype == "float16"  # the default
    await half.ensure_index()
    rng = np.random.default_rng(11)
    stored = rng.standard_normal((200, 384))
    stored /= np.linalg.norm(stored, axis=1, keepdims=True)
    for i, vector in enumerate(stored):
        await half.put(entry(f"e{i}"), vector.astype(np.float32), ttl=60)
    assert await half.count() == 200

    # near duplicates at cosine ~0.93: the top hit is the source, its similarity the cosine
    # computed in float64 from the unrounded vectors (what a FLOAT32 index would report)
    for source in range(0, 200, 10):
        noisy = stored[source] + 0.4 / np.sqrt(384) * rng.standard_normal(384)
        query = (noisy / np.linalg.norm(noisy)).astype(np.float32)
        found = await half.nearest(query, scope="s1", k=3)
        assert found[0].entry_id == f"e{source}"
        assert found[0].similarity == pytest.approx(float(query @ stored[source]), abs=1e-3)
        assert 0.85 < found[0].similarity < 0.97
        assert found[1].similarity < 0.3

    # what RediSearch holds: a FLOAT16 index, 2 bytes per component in the hash
    raw = Redis.from_url(redis_url, protocol=2)
    info = await raw.execute_command("FT.INFO", half.index_name)
    attributes = dict(zip(info[::2], info[1::2], strict=True))[b"attributes"]
    vector_attr = next(a for a in attributes if b"VECTOR" in a)
    assert b"FLOAT16" in vector_attr
    key = f"{half.prefix}e0"
    assert len(await raw.hget(key, "embedding")) == 384 * 2
    await raw.aclose()
    await client.aclose()


async def test_float16_and_float32_entries_are_never_mixed(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    half, full = (
        CacheStore(
            client, embedder_id="test-embedder", dimension=DIM, ef_runtime=50, vector_dtype=dtype
        )
        for dtype in ("float16", "float32")
    )
    assert (half.prefix, half.index_name) != (full.prefix, full.index_name)
    assert await half.ensure_index() is True
    assert await full.ensure_index() is True  # its own index, not the other's
    vector = unit([1, 0, 0, 0, 0, 0, 0, 0])
    await full.put(entry("old"), vector, ttl=60)  # an entry written before the switch
    await half.put(entry("new"), vector, ttl=60)

    assert await half.count() == 1
    assert await full.count() == 1
    assert [c.entry_id for c in await half.nearest(vector, scope="s1", k=3)] == ["new"]
    assert [c.entry_id for c in await full.nearest(vector, scope="s1", k=3)] == ["old"]
    assert await half.take_hit("old") is None  # the exact layer does not see it either
    assert await full.take_hit("new") is None
    assert 0 < await full.ttl("old") <= 60  # left alone: it expires with its TTL
    raw = Redis.from_url(redis_url, protocol=2)
    for store in (half, full):
        info = await raw.execute_command("FT.INFO", store.index_name)
        assert dict(zip(info[::2], info[1::2], strict=True))[b"hash_indexing_failures"] == 0
    await raw.aclose()
    await client.aclose()
