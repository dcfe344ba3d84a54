"""Part (b): Sentinel end to end over HTTP on loopback: exact hits, semantic hits, misses."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import aiohttp
import msgspec
import numpy as np
from redis.asyncio import Redis

from app.cache import keys
from app.cache.entry import ENTRY_FIELDS
from app.cache.metrics import MetricsStore
from app.cache.store import CacheStore
from app.lifespan import connect_redis
from app.observability.recorder import Recorder
from app.providers.embedders.local import LocalEmbedder
from app.providers.upstreams.openai_compat import OpenAICompatProvider
from app.providers.upstreams.router import ProviderRouter
from app.service.guard import configured_decision
from app.service.plan import Ask
from app.service.prompt import Scope, normalize_prompt
from app.service.query import QueryService
from app.settings import Settings, load_settings
from bench.knn import command, reply_pairs
from bench.procs import sentinel
from bench.questions import Pair
from bench.stats import Summary, Table, ms, verdict

EXACT_TARGET_MS = 3.0
SEMANTIC_TARGET_MS = 15.0
REQUEST_TIMEOUT = 30.0
COMPONENT_RUNS = 300
EMBED_RUNS = 100
FLUSH_RUNS = 10
_ENCODER = msgspec.json.Encoder()


@dataclass(frozen=True)
class E2EConfig:
    """How many requests each phase sends."""

    miss_c1: int
    c1_requests: int
    c16_exact: int
    c16_semantic: int
    concurrency: int = 16


@dataclass(frozen=True)
class Reply:
    """One /v1/query round trip as the client saw it."""

    latency_ms: float
    status: int
    match: str | None
    server_ms: float | None
    matched_prompt: str | None


@dataclass
class E2EResult:
    """Tables and headline numbers of one end-to-end run."""

    label: str
    tables: list[Table] = field(default_factory=list)
    exact_p50: float = float("nan")
    semantic_p50: float = float("nan")
    exact_rate: float = float("nan")
    semantic_rate: float = float("nan")
    metrics_agree: bool = False
    exact_c16_p99: float = float("nan")
    semantic_c16_p99: float = float("nan")
    hits: int = 0
    reindexed: int = 0
    notes: list[str] = field(default_factory=list)


async def _post(session: aiohttp.ClientSession, url: str, prompt: str) -> Reply:
    """POST one prompt and time it up to the last byte of the body."""
    body = _ENCODER.encode({"prompt": prompt})
    started = time.perf_counter()
    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
        raw = await r.read()
        status = r.status
    latency = (time.perf_counter() - started) * 1000
    if status != 200:
        return Reply(latency, status, None, None, None)
    data: dict[str, Any] = msgspec.json.decode(raw)
    return Reply(latency, status, data["match"], data["latency_ms"], data["matched_prompt"])


def _session(concurrency: int) -> aiohttp.ClientSession:
    """A keep-alive session with at most `concurrency` connections."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency),
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
    )


async def sequential(
    session: aiohttp.ClientSession, url: str, prompts: Sequence[str]
) -> list[Reply]:
    """One request at a time."""
    return [await _post(session, url, prompt) for prompt in prompts]


async def concurrent(
    url: str, prompts: Sequence[str], concurrency: int
) -> tuple[list[Reply], float]:
    """`concurrency` workers sharing one keep-alive session; returns replies and wall seconds."""
    replies: list[Reply] = []
    queue = iter(prompts)
    async with _session(concurrency) as session:

        async def worker() -> None:
            for prompt in queue:
                replies.append(await _post(session, url, prompt))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return replies, wall


def _cycle(items: Sequence[str], n: int) -> list[str]:
    return [items[i % len(items)] for i in range(n)] if items else []


def _latency_rows(replies: Sequence[Reply], match: str) -> tuple[Summary, Summary]:
    chosen = [r for r in replies if r.match == match]
    return (
        Summary.of([r.latency_ms for r in chosen]),
        Summary.of([r.server_ms for r in chosen if r.server_ms is not None]),
    )


async def index_counts(redis_url: str, index: str) -> tuple[int, int]:
    """FT.INFO num_docs and max_doc_id: every (re-)indexing of a hash takes a new doc id."""
    redis = await connect_redis(redis_url)
    try:
        info = await command(redis, "FT.INFO", index)
        fields = reply_pairs(info)
        return int(fields["num_docs"]), int(fields["max_doc_id"])
    finally:
        await redis.aclose()


async def run_e2e(
    label: str,
    *,
    redis_url: str,
    provider_url: str,
    pairs: Sequence[Pair],
    config: E2EConfig,
    embedder: LocalEmbedder,
    model: str,
    progress: Callable[[str], None],
    log_name: str,
    module: str = "app",
    store_questions: bool = True,
    components: bool = True,
) -> E2EResult:
    """Start Sentinel, run every phase, read /v1/metrics, then time the parts of a hit."""
    result = E2EResult(label)
    originals = [p.original for p in pairs]
    index = keys.index_name(embedder.id, embedder.dimension)
    everything: list[Reply] = []
    c1: list[Reply] = []
    populate: list[Reply] = []
    # Without the paraphrase alias: the semantic phases cycle the same paraphrases, which the
    # alias would serve after their first ask (~1 ms, like exact hits) instead of embedding
    # them; bench/throughput.py measures both.
    async with sentinel(
        log_name,
        redis_url=redis_url,
        provider_url=provider_url,
        module=module,
        extra={"PARAPHRASE_ALIAS": "false"},
    ) as base:
        url = f"{base}/v1/query"
        _, first_doc_id = await index_counts(redis_url, index)
        async with _session(1) as one:
            if store_questions:
                progress(f"  [{label}] {config.miss_c1} misses at c=1")
                c1 = await sequential(one, url, originals[: config.miss_c1])
                rest = originals[config.miss_c1 :]
                progress(f"  [{label}] storing the other {len(rest)} questions at c=16")
                populate, _ = await concurrent(url, rest, config.concurrency)
            progress(f"  [{label}] checking {len(pairs)} paraphrases at c=1")
            verify = await sequential(one, url, [p.paraphrase for p in pairs])
            verified = [
                p
                for p, r in zip(pairs, verify, strict=True)
                if r.match == "semantic" and r.matched_prompt == p.original
            ]
            wrong = sum(
                1
                for p, r in zip(pairs, verify, strict=True)
                if r.match == "semantic" and r.matched_prompt != p.original
            )
            other = Counter(r.match or f"HTTP {r.status}" for r in verify if r.match != "semantic")
            result.notes.append(
                f"{len(pairs)} questions stored; of their paraphrases {len(verified)} were "
                f"semantic hits on their own question (kept), {wrong} hit another question, "
                f"other outcomes {dict(other) or 'none'} (a missed paraphrase is stored, and "
                "left out of the semantic set)"
            )
            para = [p.paraphrase for p in verified]
            progress(
                f"  [{label}] {config.c1_requests} exact + {config.c1_requests} semantic at c=1"
            )
            exact_c1 = await sequential(one, url, _cycle(originals, config.c1_requests))
            semantic_c1 = await sequential(one, url, _cycle(para, config.c1_requests))
        c1_all = c1 + verify + exact_c1 + semantic_c1
        everything += c1_all + populate

        progress(f"  [{label}] {config.c16_exact} exact + {config.c16_semantic} semantic at c=16")
        exact_c16, exact_wall = await concurrent(
            url, _cycle(originals, config.c16_exact), config.concurrency
        )
        semantic_c16, semantic_wall = await concurrent(
            url, _cycle(para, config.c16_semantic), config.concurrency
        )
        everything += exact_c16 + semantic_c16

        async with _session(1) as one, one.get(f"{base}/v1/metrics") as response:
            metrics: dict[str, Any] = msgspec.json.decode(await response.read())
        num_docs, last_doc_id = await index_counts(redis_url, index)

    result.tables.append(_c1_table(result, c1_all))
    result.tables.append(
        _c16_table(result, config, exact_c16, exact_wall, semantic_c16, semantic_wall)
    )
    metrics_table = _metrics_table(result, everything, metrics)
    tally = Counter(r.match for r in everything)
    hits = tally["exact"] + tally["semantic"]
    result.hits = hits
    result.reindexed = last_doc_id - first_doc_id - tally["miss"]
    metrics_table.notes.append(
        f"FT.INFO max_doc_id grew by {last_doc_id - first_doc_id:,} during the run: "
        f"{tally['miss']:,} new entries + {result.reindexed:,} re-indexed entries, for "
        f"{hits:,} hits (num_docs {num_docs:,}); every (re-)indexing of a hash takes a new doc id"
    )
    result.tables.append(metrics_table)
    if components:
        progress(f"  [{label}] timing the parts of a hit in-process")
        settings = load_settings({})
        redis = await connect_redis(redis_url)
        try:
            here = _InProcess(redis, settings, embedder, model, pairs, verified)
            http_p50 = {"exact": result.exact_p50, "semantic": result.semantic_p50}
            result.tables.append(
                await service_breakdown(label, here, provider_url=provider_url, http_p50=http_p50)
            )
            result.tables.append(await _components(label, here, metrics))
        finally:
            await redis.aclose()
    return result


@dataclass(frozen=True)
class _InProcess:
    """What the in-process timings work on: the bench Redis, the service's settings, the
    embedder and model, the questions and the paraphrases that hit them."""

    redis: Redis
    settings: Settings
    embedder: LocalEmbedder
    model: str
    pairs: Sequence[Pair]
    verified: Sequence[Pair]

    def new_store(self) -> CacheStore:
        """A CacheStore on the bench Redis as the service builds it, with a hit counter of its
        own (so one timing's pending hits never reach the next one's flush)."""
        return CacheStore(
            self.redis,
            embedder_id=self.embedder.id,
            dimension=self.embedder.dimension,
            ef_runtime=self.settings.knn_ef_runtime,
        )


def _c1_table(result: E2EResult, replies: Sequence[Reply]) -> Table:
    table = Table(
        f"End to end at concurrency 1 — {result.label}",
        ["bucket (response `match`)", "n", "client p50 ms", "client p99 ms",
         "service `latency_ms` p50", "target p50", "target"],
    )  # fmt: skip
    targets = {"exact": EXACT_TARGET_MS, "semantic": SEMANTIC_TARGET_MS, "miss": None}
    for match, target in targets.items():
        client, server = _latency_rows(replies, match)
        if match == "exact":
            result.exact_p50 = client.p50
        elif match == "semantic":
            result.semantic_p50 = client.p50
        met = "-" if target is None else verdict(client.p50 <= target)
        table.add(
            match, client.n, ms(client.p50), ms(client.p99), ms(server.p50),
            "-" if target is None else f"≤ {target:g} ms", met,
        )  # fmt: skip
    errors = sum(1 for r in replies if r.status != 200)
    table.notes.extend(result.notes)
    table.notes.append(
        "client time = aiohttp keep-alive POST to the last body byte; `latency_ms` is what the "
        f"service measured inside QueryService.answer(); non-200 replies: {errors}"
    )
    return table


def _c16_table(
    result: E2EResult,
    config: E2EConfig,
    exact: Sequence[Reply],
    exact_wall: float,
    semantic: Sequence[Reply],
    semantic_wall: float,
) -> Table:
    table = Table(
        f"Throughput at concurrency {config.concurrency} (aiohttp, keep-alive) — {result.label}",
        ["phase", "requests", "hits of that kind", "other outcomes", "wall s", "hits/s",
         "p50 ms", "p99 ms", "max ms"],
    )  # fmt: skip
    for name, replies, wall in (
        ("exact", exact, exact_wall),
        ("semantic", semantic, semantic_wall),
    ):
        hits = [r for r in replies if r.match == name]
        rate = len(hits) / wall if wall > 0 and hits else float("nan")
        summary = Summary.of([r.latency_ms for r in hits])
        if name == "exact":
            result.exact_rate, result.exact_c16_p99 = rate, summary.p99
        else:
            result.semantic_rate, result.semantic_c16_p99 = rate, summary.p99
        slowest = max((r.latency_ms for r in hits), default=float("nan"))
        others = Counter(r.match or f"HTTP {r.status}" for r in replies if r.match != name)
        table.add(
            name, len(replies), len(hits), dict(others) or "-", f"{wall:.2f}",
            f"{rate:.0f}", ms(summary.p50), ms(summary.p99), ms(slowest),
        )  # fmt: skip
    table.notes.append(
        "client, Sentinel (one uvicorn worker), Redis and the fake provider share the 2 cores"
    )
    return table


def _metrics_table(result: E2EResult, replies: Sequence[Reply], metrics: dict[str, Any]) -> Table:
    tally = Counter(r.match for r in replies if r.status == 200)
    failed = sum(1 for r in replies if r.status != 200)
    expected = {
        "requests": len(replies),
        "exact_hits": tally["exact"],
        "semantic_hits": tally["semantic"],
        "misses": tally["miss"],
        "errors": failed,
        "upstream_calls": tally["miss"],
    }
    table = Table(
        f"GET /v1/metrics against the client's own tally — {result.label}",
        ["counter", "client", "/v1/metrics", "agree"],
    )
    agree = True
    for name, value in expected.items():
        got = metrics.get(name)
        same = got == value
        agree &= same
        table.add(name, value, got, "yes" if same else "**NO**")
    result.metrics_agree = agree
    latency = metrics.get("latency_ms", {})
    table.notes.append(
        "server-side histogram p50 over every phase, c=16 included (ms, ~5% buckets): "
        + ", ".join(
            f"{k} {latency[k]['p50']}" for k in ("exact", "semantic", "miss") if k in latency
        )
        + f"; entries in the index: {metrics.get('entries')}"
    )
    return table


async def _components(label: str, here: _InProcess, metrics: dict[str, Any]) -> Table:
    """The pieces of an exact and a semantic hit, timed one by one from this process."""
    redis, store, settings = here.redis, here.new_store(), here.settings
    pairs, verified, embedder, model = here.pairs, here.verified, here.embedder, here.model
    recorder = Recorder(MetricsStore(redis))
    scope = Scope(model=f"groq/{model}").tag()  # the service scopes by provider/model
    ids = [keys.entry_id(scope, p.original) for p in pairs]
    texts = [p.paraphrase for p in (verified or pairs)]
    vectors = [await embedder.embed(t) for t in texts[:20]]

    async def ping(i: int) -> None:
        await redis.ping()

    async def take_hit(i: int) -> None:
        await store.take_hit(ids[i % len(ids)])

    async def record(i: int) -> None:
        recorder.record(
            "exact", tenant="", model=model, latency_ms=1.0, tokens_saved=10, usd_saved=1e-6
        )

    entry_keys = [f"{store.prefix}{entry_id}" for entry_id in ids]

    async def hincrby_entry(i: int) -> None:
        await redis.hincrby(entry_keys[i % len(ids)], "hits", 1)

    async def hmget_entry(i: int) -> None:
        await redis.hmget(entry_keys[i % len(ids)], list(ENTRY_FIELDS))

    async def hincrby_outside(i: int) -> None:
        await redis.hincrby(f"bench:hits:{ids[i % len(ids)]}", "hits", 1)

    async def cpu(i: int) -> None:
        prompt = normalize_prompt(pairs[i % len(pairs)].original)
        keys.entry_id(Scope(model=f"groq/{model}").tag(), prompt)

    async def embed(i: int) -> None:
        await embedder.embed(texts[i % len(texts)])

    async def nearest(i: int) -> None:
        await store.nearest(vectors[i % len(vectors)], scope=scope, k=settings.knn_top_k)

    parts: list[tuple[str, Callable[[int], Awaitable[None]], int]] = [
        ("Redis PING round trip (redis-py asyncio, RESP3)", ping, COMPONENT_RUNS),
        ("CacheStore.take_hit (the app's code as of this run)", take_hit, COMPONENT_RUNS),
        (
            "HINCRBY `hits` on the entry hash alone (re-indexes it)",
            hincrby_entry,
            COMPONENT_RUNS,
        ),
        ("HMGET of the entry's fields alone (read only)", hmget_entry, COMPONENT_RUNS),
        ("HINCRBY on a key outside the index", hincrby_outside, COMPONENT_RUNS),
        ("Recorder.record (in process; flushed in the background)", record, COMPONENT_RUNS),
        ("normalize_prompt + Scope.tag + entry_id (CPU)", cpu, COMPONENT_RUNS),
        ("LocalEmbedder.embed, one paraphrase (bench process)", embed, EMBED_RUNS),
        (f"CacheStore.nearest() at {metrics.get('entries')} entries", nearest, COMPONENT_RUNS),
    ]
    table = Table(
        f"Redis and CPU primitives, one at a time from this process — {label}",
        ["operation", "n", "p50 ms", "p99 ms"],
    )
    counter = getattr(store, "hits", None)
    if counter is not None and hasattr(counter, "flush") and hasattr(counter, "add"):

        async def flush(i: int) -> None:
            for key in entry_keys:
                counter.add(key)
            await counter.flush()

        parts.append(
            (
                f"HitCounter.flush() with {len(entry_keys)} entries pending "
                "(one Lua script: Redis serves nothing else meanwhile)",
                flush,
                FLUSH_RUNS,
            )
        )
    for name, run, n in parts:
        samples = []
        for i in range(n):
            started = time.perf_counter()
            await run(i)
            samples.append((time.perf_counter() - started) * 1000)
        summary = Summary.of(samples)
        table.add(name, n, ms(summary.p50, 3), ms(summary.p99, 3))
    table.notes.append(
        "measured after /v1/metrics was read (record() adds counts, hit writes re-index)"
    )
    return table


BREAKDOWN_RUNS = 300
_LOOKUP = "CacheStore.take_hit: exact lookup"
_CANDIDATE = "CacheStore.take_hit: read the KNN candidate"


class _Timed:
    """A proxy adding the time of some async methods to the current request's spans."""

    def __init__(self, target: Any, spans: dict[str, float], names: dict[str, str]) -> None:
        self._target = target
        self._spans = spans
        self._names = names

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if name not in self._names:
            return attr
        spans = self._spans
        label = self._names[name]

        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await attr(*args, **kwargs)
            finally:
                span = label
                if label == _LOOKUP and _LOOKUP in spans:
                    span = _CANDIDATE
                spans[span] = spans.get(span, 0.0) + (time.perf_counter() - started) * 1000

        return timed


async def service_breakdown(
    label: str, here: _InProcess, *, provider_url: str, http_p50: dict[str, float]
) -> Table:
    """QueryService.answer() in this process with each await timed: where a hit's time goes."""
    redis, store, settings = here.redis, here.new_store(), here.settings
    pairs, verified, embedder, model = here.pairs, here.verified, here.embedder, here.model
    session = aiohttp.ClientSession()
    spans: dict[str, float] = {}
    try:
        guard, floor = configured_decision(settings, embedder.id)
        service = QueryService(
            store=cast(
                CacheStore,
                _Timed(store, spans, {"take_hit": _LOOKUP, "nearest": "CacheStore.nearest"}),
            ),
            metrics=Recorder(MetricsStore(redis)),
            embedder=cast(LocalEmbedder, _Timed(embedder, spans, {"embed": "LocalEmbedder.embed"})),
            providers=ProviderRouter(
                {
                    "groq": OpenAICompatProvider(
                        session,
                        name="groq",
                        api_key="bench",
                        base_url=provider_url,
                        model=model,
                        timeout=30.0,
                    )
                },
                "groq",
            ),
            similarity_threshold=floor,
            guard=guard,
            ttl=settings.cache_ttl,
            top_k=settings.knn_top_k,
            max_prompt_chars=settings.max_prompt_chars,
        )
        by_kind: dict[str, list[dict[str, float]]] = {"exact": [], "semantic": []}
        prompts = {
            "exact": _cycle([p.original for p in pairs], BREAKDOWN_RUNS),
            "semantic": _cycle([p.paraphrase for p in verified], BREAKDOWN_RUNS),
        }
        for prompt_list in prompts.values():
            for prompt in prompt_list:
                spans.clear()
                started = time.perf_counter()
                answer = await service.answer(Ask.of_prompt(prompt))
                spans["answer() total"] = (time.perf_counter() - started) * 1000
                if answer.match in by_kind:
                    by_kind[answer.match].append(dict(spans))
    finally:
        await session.close()

    names = [
        _LOOKUP,
        "LocalEmbedder.embed",
        "CacheStore.nearest",
        _CANDIDATE,
    ]
    table = Table(
        f"Where the time of a hit goes: QueryService.answer() in process, c=1 — {label}",
        ["step", "exact hit p50 ms", "semantic hit p50 ms"],
    )

    def p50(kind: str, name: str) -> float:
        return Summary.of([s[name] for s in by_kind[kind] if name in s]).p50

    for name in [*names, "answer() total"]:
        table.add(name, ms(p50("exact", name), 3), ms(p50("semantic", name), 3))
    parts = {k: sum(v for n in names if (v := p50(k, n)) == v) for k in by_kind}
    table.add("sum of the step medians", ms(parts["exact"], 3), ms(parts["semantic"], 3))
    table.add(
        "HTTP client p50 (c=1 run above)",
        ms(http_p50.get("exact"), 3),
        ms(http_p50.get("semantic"), 3),
    )
    table.add(
        "HTTP + ASGI + Litestar + middleware ≈ client p50 − answer() p50",
        ms(http_p50.get("exact", float("nan")) - p50("exact", "answer() total"), 3),
        ms(http_p50.get("semantic", float("nan")) - p50("semantic", "answer() total"), 3),
    )
    table.notes.append(
        f"{len(by_kind['exact'])} exact and {len(by_kind['semantic'])} semantic answers; "
        "the embedder is the bench's own LocalEmbedder (same class and settings as the service); "
        "the last row subtracts medians of two separate runs, so it is approximate (noise on "
        "the embedding can make it negative for semantic hits)"
    )
    return table


def e2e_vectors_note(pairs: Sequence[Pair]) -> str:
    """A line describing the chosen pairs."""
    if not pairs:
        return "no question pairs"
    sources = Counter(p.source for p in pairs)
    cosines = np.array([p.cosine for p in pairs])
    mix = ", ".join(f"{k} {v}" for k, v in sources.items())
    return (
        f"{len(pairs)} question/paraphrase pairs ({mix}); "
        f"bench-side cosine of each pair: min {cosines.min():.3f}, median {np.median(cosines):.3f}"
    )
