"""CacheStore against a real Redis Stack: hash layout, HNSW index, scope filter, hit counting."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest
from redis.asyncio import Redis

from app.cache.store import CacheStore, Entry, new_entry

pytestmark = pytest.mark.integration

DIM = 8


def unit(values: list[float]) -> np.ndarray:
    vector = np.array(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[CacheStore]:
    client = Redis.from_url(redis_url)
    cache = CacheStore(client, embedder_id="test-embedder", dimension=DIM, ef_runtime=50)
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
    assert found[0].similarity == pytest.approx(
        float(query @ unit([1, 0.1, 0, 0, 0, 0, 0, 0])), abs=1e-5
    )
    assert found[1].similarity == pytest.approx(0.0, abs=1e-5)
    other = await store.nearest(query, scope="s2", k=3)
    assert [c.entry_id for c in other] == ["other"]
    assert other[0].similarity == pytest.approx(1.0, abs=1e-5)
    assert await store.nearest(query, scope="s3", k=3) == []


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
