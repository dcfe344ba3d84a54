"""Part (a): KNN latency and recall@1 against numpy brute force; part (c): Redis memory."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from redis.asyncio import Redis

from app.cache.index import VECTOR_FIELD
from app.cache.store import CacheStore, new_entry
from app.cache.vectors import VectorDtype, encode_vector
from bench.stats import Summary, Table, ms

DIM = 384
PROMPT_BYTES = 60
RESPONSE_BYTES = 500
# Long enough that nothing expires during a run; every entry still carries a TTL, as in the app.
BENCH_TTL = 7 * 24 * 3600
FILL_CONCURRENCY = 16
FILL_CHUNK = 2_000
MEMORY_SAMPLE_KEYS = 200
RECALL_TARGET = 0.99
MEDIAN_TARGET_MS = 1.5

Vectors = npt.NDArray[np.float32]
Ids = npt.NDArray[np.int64]


def unit_rows(matrix: npt.NDArray[np.float64]) -> Vectors:
    """Rows scaled to unit length, as FLOAT32."""
    rows: Vectors = (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float32)
    return rows


def random_unit(rng: np.random.Generator, n: int) -> Vectors:
    """n vectors uniform on the 384-d unit sphere (normalised Gaussians)."""
    return unit_rows(rng.standard_normal((n, DIM)))


def near_duplicates(
    rng: np.random.Generator, corpus: Vectors, n: int, cosine: float
) -> tuple[Vectors, Ids]:
    """n stored vectors plus isotropic noise sized for an expected cosine to the source."""
    sources = rng.integers(0, corpus.shape[0], size=n)
    sigma = np.sqrt((1.0 / cosine**2 - 1.0) / DIM)
    noisy = corpus[sources].astype(np.float64) + sigma * rng.standard_normal((n, DIM))
    return unit_rows(noisy), sources.astype(np.int64)


def exact_neighbours(corpus: Vectors, queries: Vectors) -> tuple[Ids, npt.NDArray[np.float32]]:
    """Brute-force top-1 ids and their cosines, computed in chunks."""
    ids = np.empty(len(queries), dtype=np.int64)
    sims = np.empty(len(queries), dtype=np.float32)
    for start in range(0, len(queries), 64):
        scores = queries[start : start + 64] @ corpus.T
        best = np.argmax(scores, axis=1)
        ids[start : start + 64] = best
        sims[start : start + 64] = scores[np.arange(len(best)), best]
    return ids, sims


@dataclass(frozen=True)
class QuerySet:
    """Query vectors and their exact top-1 over the corpus as loaded."""

    name: str
    vectors: Vectors
    truth: Ids
    top1_cosine: float
    description: str


@dataclass
class Measured:
    """One method over one query set: latencies, recall@1, server time, search mode."""

    latency: Summary
    recall: float
    server_mean_ms: float | None = None
    mode: str = "-"


@dataclass
class MemorySnapshot:
    """INFO memory, FT.INFO and sampled MEMORY USAGE at one corpus size."""

    entries: int
    used_memory: int
    used_memory_rss: int
    used_memory_dataset: int
    fragmentation: float
    vector_index_bytes: float
    other_index_bytes: float
    hash_bytes_avg: float
    info: dict[str, str] = field(default_factory=dict)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def command(redis: Redis, *args: Any) -> Any:
    """A raw Redis command (redis-py leaves execute_command untyped)."""
    return await redis.execute_command(*args)  # type: ignore[no-untyped-call]


def reply_pairs(reply: Any) -> dict[str, Any]:
    """A RESP3 map or a RESP2 flat list of pairs as a dict with str keys."""
    if isinstance(reply, dict):
        return {_text(k): v for k, v in reply.items()}
    items = list(reply)
    return {_text(k): v for k, v in zip(items[::2], items[1::2], strict=False)}


def _top_key(reply: Any) -> str | None:
    """The first document key of an FT.SEARCH reply (RESP3 map or RESP2 list)."""
    if isinstance(reply, dict):
        results = reply_pairs(reply).get("results") or []
        return _text(reply_pairs(results[0])["id"]) if results else None
    return _text(reply[1]) if len(reply) > 1 else None


@dataclass
class KnnBench:
    """Fills one index through CacheStore.put and times KNN paths over it."""

    redis: Redis
    _: KW_ONLY
    corpus: Vectors
    embedder_id: str
    scope: str
    model: str
    k: int
    default_ef: int
    dtype: VectorDtype
    loaded: int = field(default=0, init=False)  # entries put so far
    baseline_memory: int = field(default=0, init=False)  # used_memory with the index empty
    _default_store: CacheStore = field(init=False)

    def __post_init__(self) -> None:
        self._default_store = self.store(self.default_ef)

    @property
    def index_name(self) -> str:
        """The RediSearch index the stores use."""
        return self._default_store.index_name

    def store(self, ef_runtime: int) -> CacheStore:
        """A CacheStore on the bench index whose nearest() uses this EF_RUNTIME."""
        return CacheStore(
            self.redis,
            embedder_id=self.embedder_id,
            dimension=DIM,
            ef_runtime=ef_runtime,
            vector_dtype=self.dtype,
        )

    async def create_index(self) -> None:
        """Create the index and note used_memory while it is empty."""
        await self._default_store.ensure_index()
        self.baseline_memory = int((await self.redis.info("memory"))["used_memory"])

    async def fill(self, size: int, progress: Callable[[str], None]) -> float:
        """Put entries [loaded, size) through CacheStore.put; return the seconds it took."""
        store = self._default_store
        gate = asyncio.Semaphore(FILL_CONCURRENCY)
        filler = ("Benchmark answer text. " * 30)[:RESPONSE_BYTES]

        async def put(i: int) -> None:
            entry = new_entry(
                entry_id=f"{i:032x}",
                prompt=f"bench question {i:09d} ".ljust(PROMPT_BYTES, "?"),
                response=filler,
                model=self.model,
                scope=self.scope,
                prompt_tokens=15,
                completion_tokens=120,
            )
            async with gate:
                await store.put(entry, self.corpus[i], ttl=BENCH_TTL)

        started = time.perf_counter()
        for chunk in range(self.loaded, size, FILL_CHUNK):
            await asyncio.gather(*(put(i) for i in range(chunk, min(size, chunk + FILL_CHUNK))))
            done = min(size, chunk + FILL_CHUNK)
            if done % 10_000 == 0 or done == size:
                progress(f"  loaded {done:,} entries ({time.perf_counter() - started:.0f} s)")
        self.loaded = size
        info = reply_pairs(await command(self.redis, "FT.INFO", self.index_name))
        indexed, failures = int(info["num_docs"]), int(info["hash_indexing_failures"])
        if indexed != size or failures:
            raise RuntimeError(f"index holds {indexed} docs ({failures} failures), expected {size}")
        return time.perf_counter() - started

    def query_sets(self, rng: np.random.Generator, n: int, near_cosine: float) -> list[QuerySet]:
        """Random unit queries and near-duplicates of stored vectors, with exact top-1."""
        corpus = self.corpus[: self.loaded]
        random_q = random_unit(rng, n)
        near_q, sources = near_duplicates(rng, corpus, n, near_cosine)
        sets = []
        for name, queries, what in (
            ("random", random_q, "uniform on the unit sphere"),
            ("near-dup", near_q, f"stored vector + noise, target cosine {near_cosine}"),
        ):
            truth, sims = exact_neighbours(corpus, queries)
            if name == "near-dup":
                kept = float(np.mean(truth == sources))
                what = f"{what} (true top-1 is the source for {kept:.1%})"  # noqa: PLW2901
            sets.append(QuerySet(name, queries, truth, float(np.mean(sims)), what))
        return sets

    async def nearest(self, ef: int, qs: QuerySet) -> Measured:
        """CacheStore.nearest() as the service calls it (redisvl, TAG filter, k)."""
        store = self.store(ef)
        top = np.full(len(qs.vectors), -1, dtype=np.int64)

        async def one(i: int) -> None:
            found = await store.nearest(qs.vectors[i], scope=self.scope, k=self.k)
            if found:
                top[i] = int(found[0].entry_id, 16)

        return await self._timed(one, qs, top)

    async def raw(self, template: str, ef: int, qs: QuerySet) -> Measured:
        """FT.SEARCH sent directly (no redisvl) with a query string built from `template`."""
        query = template.format(k=self.k, scope=self.scope, field=VECTOR_FIELD)
        prefix_len = len(self._default_store.prefix)
        top = np.full(len(qs.vectors), -1, dtype=np.int64)

        async def one(i: int) -> None:
            blob = encode_vector(qs.vectors[i], DIM, dtype=self.dtype)  # the index's TYPE
            reply = await command(
                self.redis,
                "FT.SEARCH", self.index_name, query,
                "RETURN", 1, "vector_distance",
                "SORTBY", "vector_distance", "ASC",
                "PARAMS", 4, "vector", blob, "EF", ef,
                "DIALECT", 2, "LIMIT", 0, self.k,
            )  # fmt: skip
            key = _top_key(reply)
            if key is not None:
                top[i] = int(key[prefix_len:], 16)

        return await self._timed(one, qs, top)

    def brute_force(self, qs: QuerySet) -> Measured:
        """numpy `X @ q` then argmax over the same vectors, in this process."""
        corpus = self.corpus[: self.loaded]
        samples = []
        top = np.empty(len(qs.vectors), dtype=np.int64)
        for i, query in enumerate(qs.vectors):
            started = time.perf_counter()
            top[i] = int(np.argmax(corpus @ query))
            samples.append((time.perf_counter() - started) * 1000)
        return Measured(Summary.of(samples), float(np.mean(top == qs.truth)), None, "numpy")

    async def _timed(
        self, one: Callable[[int], Awaitable[None]], qs: QuerySet, top: Ids
    ) -> Measured:
        """Run `one` per query in sequence; collect latency, recall, server time, mode."""
        await self.redis.config_resetstat()
        samples = []
        for i in range(len(qs.vectors)):
            started = time.perf_counter()
            await one(i)
            samples.append((time.perf_counter() - started) * 1000)
        stats = await self.redis.info("commandstats")
        search = stats.get("cmdstat_FT.SEARCH")
        server = float(search["usec_per_call"]) / 1000 if search else None
        return Measured(
            Summary.of(samples), float(np.mean(top == qs.truth)), server, await self.mode()
        )

    async def mode(self) -> str:
        """LAST_SEARCH_MODE of the vector index (STANDARD_KNN, HYBRID_BATCHES, ...)."""
        reply = await command(self.redis, "FT.DEBUG", "VECSIM_INFO", self.index_name, VECTOR_FIELD)
        return _text(reply_pairs(reply).get("LAST_SEARCH_MODE", "?"))

    async def memory(self) -> MemorySnapshot:
        """used_memory and the index's own accounting at the current size."""
        info = await self.redis.info("memory")
        ft = reply_pairs(await command(self.redis, "FT.INFO", self.index_name))
        mib = 1024 * 1024
        vector_bytes = float(_text(ft["vector_index_sz_mb"])) * mib
        other_bytes = sum(
            float(_text(ft[name])) * mib
            for name in ("doc_table_size_mb", "key_table_size_mb", "inverted_sz_mb")
            if name in ft
        )
        step = max(1, self.loaded // MEMORY_SAMPLE_KEYS)
        prefix = self._default_store.prefix
        sizes = []
        for i in range(0, self.loaded, step):
            size = await self.redis.memory_usage(f"{prefix}{i:032x}", samples=0)
            if size:
                sizes.append(int(size))
        shown = (
            "used_memory_human",
            "used_memory_rss_human",
            "used_memory_peak_human",
            "used_memory_dataset",
            "used_memory_overhead",
            "mem_fragmentation_ratio",
            "mem_allocator",
        )
        return MemorySnapshot(
            entries=self.loaded,
            used_memory=int(info["used_memory"]),
            used_memory_rss=int(info["used_memory_rss"]),
            used_memory_dataset=int(info["used_memory_dataset"]),
            fragmentation=float(info["mem_fragmentation_ratio"]),
            vector_index_bytes=vector_bytes,
            other_index_bytes=other_bytes,
            hash_bytes_avg=float(np.mean(sizes)) if sizes else float("nan"),
            info={name: str(info.get(name, "-")) for name in shown},
        )


# Query strings; {{ }} are literal braces of the TAG syntax.
FILTERED = "(@scope:{{{scope}}})=>[KNN {k} @{field} $vector EF_RUNTIME $EF AS vector_distance]"
FILTERED_BATCHES = (
    "(@scope:{{{scope}}})=>[KNN {k} @{field} $vector HYBRID_POLICY BATCHES "
    "EF_RUNTIME $EF AS vector_distance]"
)
UNFILTERED = "*=>[KNN {k} @{field} $vector EF_RUNTIME $EF AS vector_distance]"


@dataclass
class SizeResult:
    """Every method at one corpus size and the default EF_RUNTIME."""

    size: int
    ef: int
    k: int
    rows: dict[str, dict[str, Measured]]


async def measure_size(bench: KnnBench, sets: Sequence[QuerySet]) -> SizeResult:
    """The service path, raw FT.SEARCH variants and numpy, each over every query set."""
    ef = bench.default_ef
    rows: dict[str, dict[str, Measured]] = {}
    methods: list[tuple[str, Callable[[QuerySet], Awaitable[Measured]]]] = [
        ("CacheStore.nearest() (redisvl, TAG filter)", lambda q: bench.nearest(ef, q)),
        ("raw FT.SEARCH, same query (TAG filter)", lambda q: bench.raw(FILTERED, ef, q)),
        (
            "raw FT.SEARCH, TAG filter + HYBRID_POLICY BATCHES",
            lambda q: bench.raw(FILTERED_BATCHES, ef, q),
        ),
        ("raw FT.SEARCH, no filter", lambda q: bench.raw(UNFILTERED, ef, q)),
    ]
    for name, run in methods:
        rows[name] = {qs.name: await run(qs) for qs in sets}
    # numpy's cost does not depend on the query: timed on the random set only.
    brute = bench.brute_force(sets[0])
    rows["numpy brute force `X @ q` (in process)"] = {sets[0].name: brute}
    return SizeResult(bench.loaded, ef, bench.k, rows)


def size_table(result: SizeResult, sets: Sequence[QuerySet]) -> Table:
    """One row per method: p50/p99/recall per query set, server mean, search mode."""
    headers = ["method", "search mode"]
    for qs in sets:
        headers += [f"{qs.name} p50 ms", f"{qs.name} p99 ms", f"{qs.name} recall@1"]
    headers.append("server mean ms (random)")
    table = Table(
        f"KNN at {result.size:,} entries (k={result.k}, EF_RUNTIME {result.ef}, "
        f"{sets[0].vectors.shape[0]} queries per set)",
        headers,
    )
    for name, by_set in result.rows.items():
        cells = [name, next(iter(by_set.values())).mode]
        for qs in sets:
            m = by_set.get(qs.name)
            cells += (
                [ms(m.latency.p50, 3), ms(m.latency.p99, 3), f"{m.recall:.3f}"]
                if m
                else ["-", "-", "-"]
            )
        server = by_set[sets[0].name].server_mean_ms
        cells.append(ms(server, 3))
        table.add(*cells)
    for qs in sets:
        table.notes.append(
            f"{qs.name}: {qs.description}; mean cosine of the true top-1: {qs.top1_cosine:.3f}"
        )
    return table


@dataclass
class SweepRow:
    """One EF_RUNTIME value: the service path and the unfiltered HNSW query."""

    ef: int
    service: dict[str, Measured]
    unfiltered: dict[str, Measured]


async def sweep(bench: KnnBench, sets: Sequence[QuerySet], efs: Sequence[int]) -> list[SweepRow]:
    """The service path and unfiltered KNN for each EF_RUNTIME value."""
    rows = []
    for ef in efs:
        service = {qs.name: await bench.nearest(ef, qs) for qs in sets}
        unfiltered = {qs.name: await bench.raw(UNFILTERED, ef, qs) for qs in sets}
        rows.append(SweepRow(ef, service, unfiltered))
    return rows


def sweep_table(size: int, k: int, rows: Sequence[SweepRow]) -> Table:
    """EF_RUNTIME sweep: latency and recall of nearest() and of unfiltered KNN."""
    table = Table(
        f"EF_RUNTIME sweep at {size:,} entries (k={k})",
        [
            "EF_RUNTIME",
            "nearest() mode",
            "nearest() random p50 ms",
            "p99 ms",
            "random recall@1",
            "near-dup p50 ms",
            "near-dup recall@1",
            "server mean ms",
            "no filter: random p50 ms",
            "random recall@1",
            "near-dup recall@1",
        ],
    )
    for row in rows:
        rnd, dup = row.service["random"], row.service["near-dup"]
        table.add(
            row.ef,
            rnd.mode,
            ms(rnd.latency.p50, 3),
            ms(rnd.latency.p99, 3),
            f"{rnd.recall:.3f}",
            ms(dup.latency.p50, 3),
            f"{dup.recall:.3f}",
            ms(rnd.server_mean_ms, 3),
            ms(row.unfiltered["random"].latency.p50, 3),
            f"{row.unfiltered['random'].recall:.3f}",
            f"{row.unfiltered['near-dup'].recall:.3f}",
        )
    return table


@dataclass(frozen=True)
class SweepFinding:
    """The smallest EF meeting the recall target on each query set, and its median."""

    random_ef: int | None
    random_p50: float | None
    near_ef: int | None
    near_p50: float | None


def sweep_finding(rows: Sequence[SweepRow]) -> SweepFinding:
    """Smallest EF with recall@1 >= 0.99 on the service path (random, then near-dup)."""

    def first(name: str) -> tuple[int | None, float | None]:
        for row in rows:
            if row.service[name].recall >= RECALL_TARGET:
                return row.ef, row.service[name].latency.p50
        return None, None

    random_ef, random_p50 = first("random")
    near_ef, near_p50 = first("near-dup")
    return SweepFinding(random_ef, random_p50, near_ef, near_p50)


def bytes_per_entry(snapshot: MemorySnapshot, baseline: int) -> float:
    """used_memory growth per entry since the empty index."""
    return (snapshot.used_memory - baseline) / max(1, snapshot.entries)


def memory_table(snapshots: Sequence[MemorySnapshot], baseline: int, dtype: VectorDtype) -> Table:
    """Bytes per entry: used_memory delta, vector index, other index parts, one hash."""
    table = Table(
        f"Redis memory per entry (384-d {dtype.upper()}, 60-byte prompt, 500-byte answer, TTL set)",
        [
            "entries",
            "used_memory",
            "delta / entry",
            "HNSW index / entry (FT.INFO)",
            "other index parts / entry",
            "one hash (MEMORY USAGE)",
            "used_memory_rss",
            "frag ratio",
        ],
    )
    for snap in snapshots:
        n = max(1, snap.entries)
        table.add(
            f"{snap.entries:,}",
            f"{snap.used_memory / 1e6:.1f} MB",
            f"{bytes_per_entry(snap, baseline):,.0f} B",
            f"{snap.vector_index_bytes / n:,.0f} B",
            f"{snap.other_index_bytes / n:,.0f} B",
            f"{snap.hash_bytes_avg:,.0f} B",
            f"{snap.used_memory_rss / 1e6:.1f} MB",
            f"{snap.fragmentation:.2f}",
        )
    table.notes.append(
        f"delta = used_memory minus the {baseline / 1e6:.2f} MB measured with the empty index; "
        "MB = 10^6 bytes; one hash = mean MEMORY USAGE (SAMPLES 0) over "
        f"{MEMORY_SAMPLE_KEYS} entries; other index parts = FT.INFO doc table + key table + "
        "inverted (TAG) index"
    )
    if snapshots:
        last = snapshots[-1]
        table.notes.append(
            f"INFO memory at {last.entries:,}: "
            + ", ".join(f"{k}={v}" for k, v in last.info.items())
        )
    return table
