"""Issue 15's semantic-hit study: the embedder alone under concurrency, then semantic hits.

`embedder`: the local embedder alone, per configuration (intra-op threads, pool workers,
micro-batching): sequential single-embed p50 (c=1) and embeds/s with 16 concurrent callers
over distinct questions (c=16). Configurations are interleaved over rounds, medians kept.

`hits`: semantic hits through HTTP (a Sentinel process, /v1/chat/completions) at c=1 p50 and
c=16 hits/s, with distinct paraphrases (each asked once: every hit embeds) and repeated ones
(the paraphrase alias serves them without an embed), against an in-process embed + KNN of the
same model in the same sitting. Run under `flock /tmp/sentinel-bench.lock`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import Redis

import bench.procs as procs
from app.cache.store import CacheStore
from app.providers.embedders.local import LocalEmbedder
from app.service.guard import configured_decision
from app.settings import load_settings
from bench.e2e import Reply, concurrent, sequential
from bench.e2e import _session as http_session
from bench.questions import DEV_PAIRS, FALLBACK_PAIRS, Pair, candidate_pairs, choose_pairs

CONCURRENCY = 16


def questions(n: int) -> list[str]:
    """`n` distinct dev questions (paraphrase sides), or the fallback list repeated."""
    found: list[str] = []
    if DEV_PAIRS.exists():
        import json  # noqa: PLC0415

        seen: set[str] = set()
        for line in DEV_PAIRS.read_text().splitlines():
            row = json.loads(line)
            for key in ("a", "b", "q1", "q2", "question1", "question2"):
                value = row.get(key)
                if isinstance(value, str) and 8 < len(value) < 300 and value not in seen:
                    seen.add(value)
                    found.append(value)
            if len(found) >= n:
                break
    if len(found) < n:
        flat = [q for pair in FALLBACK_PAIRS for q in pair]
        found += [f"{flat[i % len(flat)]} ({i})" for i in range(n - len(found))]
    return found[:n]


async def c1_p50(call: Callable[[str], Awaitable[object]], texts: Sequence[str]) -> float:
    """Median latency (ms) of sequential calls."""
    times = []
    for text in texts:
        started = time.perf_counter()
        await call(text)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def c16_rate(
    call: Callable[[str], Awaitable[object]], texts: Sequence[str], concurrency: int = CONCURRENCY
) -> float:
    """Calls per second with `concurrency` callers over `texts` (each once)."""
    position = 0

    async def worker() -> None:
        nonlocal position
        while position < len(texts):
            text = texts[position]
            position += 1
            await call(text)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(texts) / (time.perf_counter() - started)


@dataclass(frozen=True)
class Config:
    """One embedder configuration."""

    intra: int
    workers: int
    batching: bool

    @property
    def label(self) -> str:
        return f"{self.intra}x{self.workers}{' batched' if self.batching else ''}"


CONFIGS = (
    Config(2, 2, False),
    Config(1, 2, False),
    Config(2, 1, False),
    Config(1, 1, False),
    Config(2, 2, True),
    Config(1, 2, True),
    Config(2, 1, True),
    Config(1, 1, True),
)


async def embedder_round(
    config: Config, single: Sequence[str], many: Sequence[str]
) -> tuple[float, float, float]:
    """(c=1 p50 ms, c=16 embeds/s, mean rows per ONNX run at c=16) for one configuration."""
    embedder = await LocalEmbedder.load(
        intra_op_threads=config.intra, workers=config.workers, batching=config.batching
    )
    try:
        for text in single[:20]:
            await embedder.embed(text)
        p50 = await c1_p50(embedder.embed, single)
        rate = await c16_rate(embedder.embed, many)
        batcher = embedder._batcher
        rows = 1.0 if batcher is None or batcher.batches == 0 else batcher.rows / batcher.batches
        return p50, rate, rows
    finally:
        await embedder.aclose()


async def study_embedder(rounds: int, configs: Sequence[Config]) -> None:
    texts = questions(900)
    single, many = texts[:100], texts[100:]
    results: dict[str, list[tuple[float, float, float]]] = {c.label: [] for c in configs}
    for r in range(rounds):
        for config in configs:
            results[config.label].append(await embedder_round(config, single, many))
            p50, rate, per_run = results[config.label][-1]
            print(
                f"round {r + 1} {config.label:>12}: c1 p50 {p50:.2f} ms, "
                f"c16 {rate:.0f}/s, rows/run {per_run:.1f}",
                flush=True,
            )
    print(
        "\n| intra_op × workers | micro-batch | c=1 p50 (ms) | c=16 embeds/s "
        "| rows per ONNX run (c=16) |"
    )
    print("|---|---|---|---|---|")
    for config in configs:
        runs = results[config.label]
        print(
            f"| {config.intra} × {config.workers} | {'by length' if config.batching else 'no'} "
            f"| {statistics.median(r[0] for r in runs):.2f} "
            f"| {statistics.median(r[1] for r in runs):.0f} "
            f"| {statistics.median(r[2] for r in runs):.1f} |"
        )


@contextlib.asynccontextmanager
async def sentinel_from(
    tree: Path | None, name: str, redis_url: str, provider: str
) -> AsyncIterator[str]:
    """Sentinel from this worktree, or from `tree` (e.g. `git archive` of the commit before)."""
    saved = procs.ROOT
    if tree is not None:
        procs.ROOT = tree  # Child starts `python -m app` in ROOT
    try:
        async with procs.sentinel(name, redis_url=redis_url, provider_url=provider) as base:
            procs.ROOT = saved
            yield base
    finally:
        procs.ROOT = saved


async def drop_aliases(redis: Redis) -> None:
    """Forget every paraphrase alias (so "distinct" rounds embed every time)."""
    await asyncio.sleep(0.3)  # alias writes land after their answers
    found = [key async for key in redis.scan_iter(match="sentinel:*:alias:*", count=1000)]
    if found:
        await redis.unlink(*found)


def rate_of(replies: Sequence[Reply], wall: float) -> tuple[float, int]:
    """Semantic hits per second, and how many replies were not semantic hits."""
    hits = sum(1 for r in replies if r.match == "semantic")
    return hits / wall, len(replies) - hits


async def http_round(
    base: str, redis: Redis, para: Sequence[str], c1: int, c16: int
) -> dict[str, float]:
    """One round of the four HTTP phases; non-hits counted in `off`."""
    url = f"{base}/v1/query"
    out: dict[str, float] = {}
    off = 0
    await drop_aliases(redis)
    async with http_session(1) as one:
        replies = await sequential(one, url, para[:c1])
    off += sum(1 for r in replies if r.match != "semantic")
    out["distinct c1 p50"] = statistics.median(r.latency_ms for r in replies)
    await drop_aliases(redis)
    replies, wall = await concurrent(url, para[c1 : c1 + c16], CONCURRENCY)
    out["distinct c16 /s"], bad = rate_of(replies, wall)
    off += bad
    repeated = para[:REPEATED]  # aliased by now, unless aliases do not exist (before)
    async with http_session(1) as one:
        await sequential(one, url, repeated)
        await asyncio.sleep(0.3)
        replies = await sequential(one, url, [repeated[i % REPEATED] for i in range(c1)])
    off += sum(1 for r in replies if r.match != "semantic")
    out["repeated c1 p50"] = statistics.median(r.latency_ms for r in replies)
    replies, wall = await concurrent(url, [repeated[i % REPEATED] for i in range(c16)], CONCURRENCY)
    out["repeated c16 /s"], bad = rate_of(replies, wall)
    out["off"] = off + bad
    await drop_aliases(redis)
    return out


async def inprocess_round(
    embedder: LocalEmbedder, store: CacheStore, scope: str, para: Sequence[str], c1: int, c16: int
) -> dict[str, float]:
    """Embed + KNN in this process (no HTTP, no scope building, no judge): the yardstick."""

    async def hit(text: str) -> None:
        await store.nearest(await embedder.embed(text), scope=scope, k=1)

    return {
        "in-process c1 p50": await c1_p50(hit, para[:c1]),
        "in-process c16 /s": await c16_rate(hit, para[c1 : c1 + c16]),
    }


REPEATED = 40


async def study_hits(rounds: int, before: Path | None, c1: int, c16: int) -> None:
    settings = load_settings({})
    embedder = await LocalEmbedder.load()
    candidates, note = candidate_pairs()
    guard, floor = configured_decision(settings, embedder.id)
    pairs: list[Pair] = await choose_pairs(
        embedder, candidates, want=c1 + c16 + 50, threshold=floor, guard=guard, seed=15
    )
    print(f"{note}; {len(pairs)} pairs chosen", flush=True)
    results: dict[str, dict[str, list[float]]] = {}
    async with (
        procs.bench_redis("semantic-study") as server,
        procs.fake_provider(0.0) as provider,
    ):
        redis = Redis.from_url(server.url)
        store = CacheStore(
            redis, embedder_id=embedder.id, dimension=embedder.dimension,
            ef_runtime=settings.knn_ef_runtime,
        )  # fmt: skip
        systems = [("after", None)] + ([] if before is None else [("before", before)])
        async with sentinel_from(None, "study-setup", server.url, provider) as base:
            await concurrent(f"{base}/v1/query", [p.original for p in pairs], CONCURRENCY)
            async with http_session(1) as one:
                checked = await sequential(one, f"{base}/v1/query", [p.paraphrase for p in pairs])
        para = [p.paraphrase for p, r in zip(pairs, checked, strict=True) if r.match == "semantic"]
        print(f"{len(para)} paraphrases are semantic hits", flush=True)
        await drop_aliases(redis)
        scope = (await store.search(limit=1)).entries[0].entry.scope
        for r in range(rounds):
            for label, tree in systems:
                async with sentinel_from(tree, f"study-{label}", server.url, provider) as base:
                    out = await http_round(base, redis, para, c1, c16)
                for key, value in out.items():
                    results.setdefault(label, {}).setdefault(key, []).append(value)
                print(f"round {r + 1} {label}: {out}", flush=True)
            out = await inprocess_round(embedder, store, scope, para, c1, c16)
            for key, value in out.items():
                results.setdefault("in-process", {}).setdefault(key, []).append(value)
            print(f"round {r + 1} in-process: {out}", flush=True)
        await redis.aclose()
    await embedder.aclose()
    base_c1 = statistics.median(results["in-process"]["in-process c1 p50"])
    base_c16 = statistics.median(results["in-process"]["in-process c16 /s"])
    print(f"\nin-process embed + KNN: c=1 p50 {base_c1:.2f} ms, c=16 {base_c16:.0f}/s")
    print(
        "\n| system | paraphrases | c=1 p50 (ms) | ratio to in-process | c=16 hits/s | ratio "
        "| not hits |"
    )
    print("|---|---|---|---|---|---|---|")
    for label in [name for name, _ in systems]:
        rows = results[label]
        for kind in ("distinct", "repeated"):
            p50 = statistics.median(rows[f"{kind} c1 p50"])
            rate = statistics.median(rows[f"{kind} c16 /s"])
            print(
                f"| {label} | {kind} | {p50:.2f} | {p50 / base_c1:.2f}x | {rate:.0f} "
                f"| {rate / base_c16:.2f}x | {max(rows['off']):.0f} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="what", required=True)
    emb = sub.add_parser("embedder")
    emb.add_argument("--rounds", type=int, default=3)
    emb.add_argument("--only", nargs="*", default=None, help="labels, e.g. 2x2 '1x2 batched'")
    hits = sub.add_parser("hits")
    hits.add_argument("--rounds", type=int, default=3)
    hits.add_argument("--before", type=Path, default=None, help="a source tree to compare")
    hits.add_argument("--c1", type=int, default=60)
    hits.add_argument("--c16", type=int, default=300)
    args = parser.parse_args()
    if args.what == "embedder":
        configs = [c for c in CONFIGS if args.only is None or c.label in args.only]
        asyncio.run(study_embedder(args.rounds, configs))
    else:
        asyncio.run(study_hits(args.rounds, args.before, args.c1, args.c16))


if __name__ == "__main__":
    main()
