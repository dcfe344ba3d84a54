"""`python -m bench.profile_semantic`: where a first-time semantic hit's time and CPU go.

Sentinel (`python -m bench.traced_app`: `python -m app`, one worker, default settings, with
probes) and the in-process reference of bench/throughput.py (embed + KNN with the service's
own LocalEmbedder and CacheStore.nearest, same model, threads and index, in this process)
answer the same verified paraphrases, aliases dropped before every pass so each request
embeds as a first-time paraphrase does. Per round:

- c=1: Sentinel's p50 and mean time per layer (its /metrics), the per-request timeline of an
  exact and of a semantic hit (bench/traced_app.py); the reference's p50, embed and KNN means.
- c=16: CPU milliseconds per hit of Sentinel's event-loop thread and its other threads (the
  embedder's), of this process (the load generator, or the reference) and of Redis, read from
  /proc; rows per ONNX run of the micro-batcher on both sides.

With `--py-spy`, py-spy records Sentinel under c=16 load (and, apart, this process running the
reference) and a flame summary (self and total share of the top frames; the event loop's
thread and all threads) is printed. Output: the report on stdout. Run it under the bench lock.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import signal
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from redis.asyncio import Redis

from app.cache.store import CacheStore
from app.lifespan import connect_redis
from app.providers.embedders.local import LocalEmbedder
from app.service.guard import configured_decision
from app.settings import load_settings
from bench import semantic_stages
from bench.procs import BENCH_VAR, bench_redis, fake_provider, sentinel
from bench.questions import candidate_pairs, choose_pairs
from bench.tput_http import CHAT_PATH, chat_body, load
from bench.tput_inproc import drive, embed_knn, entry_scope

# py-spy (PyPI) is not in the service's lock: install it anywhere and name it in PY_SPY, or
# have it on PATH.
PY_SPY = Path(os.environ.get("PY_SPY") or shutil.which("py-spy") or "py-spy")
TICK = os.sysconf("SC_CLK_TCK")
C16 = 16
SCOPE = 700  # max_tokens of the scope every measurement here uses
OUT = BENCH_VAR / "profile-semantic"


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of `pid`, by thread id."""
    out: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / TICK
    return out


class Meter:
    """CPU of a few processes over one phase, per hit, the main thread (event loop) apart."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.before = {label: thread_cpu(pid) for label, pid in pids.items()}

    def report(self, hits: int) -> list[str]:
        """Lines: ms of CPU per hit by process, its loop thread and its busiest others."""
        lines = []
        total = 0.0
        for label, pid in self.pids.items():
            before, after = self.before[label], thread_cpu(pid)
            spent = {tid: after[tid] - before.get(tid, 0.0) for tid in after}
            whole = sum(spent.values())
            total += whole
            others = sorted((s for tid, s in spent.items() if tid != pid), reverse=True)
            parts = [f"loop {1000 * spent.get(pid, 0.0) / hits:.2f}"]
            parts += [f"{1000 * s / hits:.2f}" for s in others[:4] if s > 0.005 * hits]
            lines.append(f"  {label}: {1000 * whole / hits:.2f} ms/hit ({', '.join(parts)})")
        lines.append(f"  all three: {1000 * total / hits:.2f} ms of CPU per hit")
        return lines


async def drop_aliases(redis: Redis) -> None:
    """Forget every paraphrase alias, so the next pass embeds every paraphrase again."""
    await asyncio.sleep(0.2)  # alias writes land after their answers
    found = [key async for key in redis.scan_iter(match="sentinel:*:alias:*", count=1000)]
    if found:
        await redis.unlink(*found)


async def layer_seconds(base: str) -> dict[str, tuple[float, float]]:
    """(sum, count) of Sentinel's per-layer time histogram, from /metrics."""
    out: dict[str, tuple[float, float]] = {}
    async with aiohttp.ClientSession() as session, session.get(f"{base}/metrics") as reply:
        text = await reply.text()
    for line in text.splitlines():
        if not line.startswith("sentinel_layer_duration_seconds_"):
            continue
        name, value = line.rsplit(" ", 1)
        if not (name.startswith("sentinel_layer_duration_seconds_sum") or "_count" in name):
            continue
        layer = name.split('layer="', 1)[1].split('"', 1)[0]
        total, count = out.get(layer, (0.0, 0.0))
        if "_sum" in name:
            total = float(value)
        else:
            count = float(value)
        out[layer] = (total, count)
    return out


def layer_means(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
) -> str:
    """Mean ms per layer between two readings (and how many times each ran)."""
    parts = []
    for layer, (total, count) in after.items():
        t0, c0 = before.get(layer, (0.0, 0.0))
        if count > c0:
            parts.append(f"{layer} {1000 * (total - t0) / (count - c0):.2f} ms ×{count - c0:.0f}")
    return ", ".join(parts)


def _answer(pid: int, signum: int, path: Path) -> str:
    path.unlink(missing_ok=True)
    os.kill(pid, signum)
    deadline = time.monotonic() + 10.0
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {path.name} from Sentinel within 10 s")
        time.sleep(0.02)
    return path.read_text()


async def signalled(pid: int, signum: int, path: Path) -> str:
    """Send `signum` to `pid` and read the file it answers with (polled off the loop)."""
    return await asyncio.to_thread(_answer, pid, signum, path)


def spy(pid: int, path: Path, seconds: float, native: bool) -> subprocess.Popen[bytes]:
    """py-spy record of `pid` for `seconds`, raw (collapsed) stacks with thread ids."""
    argv = [str(PY_SPY), "record", "-p", str(pid), "-d", str(int(seconds)), "-f", "raw"]
    argv += ["-o", str(path), "-r", "200", "-t"]
    # --native needs the target paused while its stack is read.
    argv.append("--native" if native else "--nonblocking")
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _frame(name: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py)": lines merged.
    if " (" not in name:
        return name
    func, where = name.split(" (", 1)
    where = where.rstrip(")").rsplit(":", 1)[0]
    return f"{func} ({where.rsplit('/', 1)[-1]})"


def flame_summary(path: Path, *, thread: int | None, top: int) -> str:
    """Top frames by self and by total share of the samples (of one thread, or all)."""
    own: collections.Counter[str] = collections.Counter()
    total_of: collections.Counter[str] = collections.Counter()
    samples = every = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        every += n
        if thread is not None and not stack.startswith(f"thread ({thread})"):
            continue
        samples += n
        frames = [_frame(f) for f in stack.split(";")[1:]] or ["(no Python frame)"]
        own[frames[-1]] += n
        for f in set(frames):
            total_of[f] += n
    if not samples:
        return "no samples"
    out = [f"{samples} samples of {every} ({100 * samples / every:.0f}%)", "self:"]
    out += [f"  {100 * n / samples:5.1f}%  {f}" for f, n in own.most_common(top)]
    out.append("total:")
    out += [f"  {100 * n / samples:5.1f}%  {f}" for f, n in total_of.most_common(top)]
    return "\n".join(out)


async def repeat_for(seconds: float, one_pass: Callable[[], Awaitable[int]]) -> int:
    """Passes until `seconds` have gone; hits summed."""
    hits = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        hits += await one_pass()
    return hits


async def amain(args: argparse.Namespace) -> None:
    """Start Redis, the fake provider and Sentinel; measure; print."""
    settings = load_settings({})
    embedder = await LocalEmbedder.load(model=settings.local_embedding_model)
    guard, floor = configured_decision(settings, embedder.id)
    candidates, _ = candidate_pairs()
    pairs = await choose_pairs(
        embedder, candidates, want=200, threshold=floor, guard=guard, seed=1234
    )
    if args.stages:
        await embedder.aclose()
        await semantic_stages.run(
            [(p.original, p.paraphrase) for p in pairs],
            scope=SCOPE,
            rounds=args.rounds,
            cprofile=args.cprofile,
        )
        return
    OUT.mkdir(parents=True, exist_ok=True)
    pid: list[int] = []
    async with (
        bench_redis("profile-semantic") as server,
        fake_provider(0.3) as provider,
        sentinel(
            "profile-semantic",
            redis_url=server.url,
            provider_url=provider,
            module="bench.traced_app",
            extra={"BATCH_STATS": str(OUT / "batches"), "TRACE_OUT": str(OUT / "trace")},
            started=lambda child: pid.append(child.process.pid),
        ) as base,
    ):
        redis = await connect_redis(server.url)
        store = CacheStore(
            redis, embedder_id=embedder.id, dimension=embedder.dimension,
            ef_runtime=settings.knn_ef_runtime,
        )  # fmt: skip
        redis_pid = int((await redis.info("server"))["process_id"])
        url = base + CHAT_PATH
        originals = [chat_body(p.original, SCOPE) for p in pairs]
        await load(url, originals, C16)
        first = await load(url, originals, 1)
        entries = {p.original: s.entry for p, s in zip(pairs, first.shots, strict=True)}
        checked = await load(url, [chat_body(p.paraphrase, SCOPE) for p in pairs], 1)
        verified = [
            p
            for p, s in zip(pairs, checked.shots, strict=True)
            if s.cache == "HIT-SEMANTIC" and s.entry == entries[p.original]
        ]
        print(f"{len(verified)} verified paraphrases of {len(pairs)}", flush=True)
        bodies = [chat_body(p.paraphrase, SCOPE) for p in verified]
        texts = [p.paraphrase for p in verified]
        scope = await entry_scope(redis, store, entries[verified[0].original])
        probe = originals[0]
        walls: list[float] = []

        async def http_pass() -> int:
            await drop_aliases(redis)
            run = await load(url, bodies, C16, probe)
            walls.append(run.wall)
            return run.count("HIT-SEMANTIC")

        knn = embed_knn(
            embedder, store, scope=scope, k=settings.knn_top_k, floor=floor, texts=texts
        )

        async def inproc_pass() -> int:
            return (await drive(knn, len(texts), C16)).found

        async def sentinel_batches() -> tuple[int, int]:
            runs, rows = (await signalled(pid[0], signal.SIGUSR1, OUT / "batches")).split()
            return int(runs), int(rows)

        def own_batches() -> tuple[int, int]:
            batcher = embedder._batcher
            return (0, 0) if batcher is None else (batcher.batches, batcher.rows)

        def per_run(before: tuple[int, int], after: tuple[int, int]) -> str:
            runs, rows = after[0] - before[0], after[1] - before[1]
            return f"  rows per ONNX run: {rows / runs:.2f} ({runs} runs)" if runs else ""

        await http_pass()  # warm both
        await inproc_pass()
        for r in range(1, args.rounds + 1):
            await drop_aliases(redis)
            os.kill(pid[0], signal.SIGUSR2)  # the timeline on
            await load(url, originals, 1, probe)
            layers0 = await layer_seconds(base)
            run = await load(url, bodies, 1, probe)
            layers1 = await layer_seconds(base)
            await sentinel_batches()  # ... and off, written
            p50 = run.latency("HIT-SEMANTIC").p50
            print(f"\nround {r} Sentinel c=1: semantic hit p50 {p50:.2f} ms")
            print(f"  layer means: {layer_means(layers0, layers1)}")
            print(await asyncio.to_thread((OUT / "trace").read_text), end="")
            embeds, knns, totals = [], [], []
            for text in texts:
                t0 = time.perf_counter()
                vector = await embedder.embed(text)
                t1 = time.perf_counter()
                await store.nearest(vector, scope=scope, k=settings.knn_top_k)
                t2 = time.perf_counter()
                embeds.append(t1 - t0)
                knns.append(t2 - t1)
                totals.append(t2 - t0)
            print(
                f"round {r} in-process c=1: p50 {1000 * statistics.median(totals):.2f} ms; "
                f"embed p50 {1000 * statistics.median(embeds):.2f} ms, "
                f"KNN p50 {1000 * statistics.median(knns):.2f} ms",
                flush=True,
            )
        pids = {"Sentinel": pid[0], "bench process": os.getpid(), "Redis": redis_pid}
        for r in range(1, args.rounds + 1):
            b0 = await sentinel_batches()
            meter = Meter(pids)
            walls.clear()
            hits = await repeat_for(args.seconds, http_pass)
            lines = meter.report(hits)
            print(f"\nround {r} Sentinel c=16: {hits / sum(walls):.0f} hits/s")
            print("\n".join(lines) + "\n" + per_run(b0, await sentinel_batches()))
            b0 = own_batches()
            meter = Meter(pids)
            started = time.perf_counter()
            hits = await repeat_for(args.seconds, inproc_pass)
            rate = hits / (time.perf_counter() - started)
            lines = meter.report(hits)
            print(f"round {r} in-process c=16: {rate:.0f} ops/s")
            print("\n".join(lines) + "\n" + per_run(b0, own_batches()), flush=True)
        if args.py_spy:
            for name, target, one_pass in (
                ("Sentinel", pid[0], http_pass),
                ("in-process reference", os.getpid(), inproc_pass),
            ):
                path = OUT / f"{name.split()[0].lower()}.raw"
                path.unlink(missing_ok=True)
                proc = spy(target, path, args.seconds, args.native)
                await asyncio.sleep(0.5)
                await repeat_for(args.seconds, one_pass)
                await asyncio.to_thread(proc.wait)
                if not path.exists():
                    print(f"\npy-spy wrote nothing for {name}")
                    continue
                print(f"\n== py-spy, {name}, c=16: the event loop's thread")
                print(flame_summary(path, thread=target, top=args.top))
                print(f"\n== py-spy, {name}, c=16: all threads")
                print(flame_summary(path, thread=None, top=12), flush=True)
        await redis.aclose()
    await embedder.aclose()


def main() -> None:
    """Parse arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=8.0, help="per c=16 measurement")
    parser.add_argument("--py-spy", action="store_true", help="and a flame summary")
    parser.add_argument("--native", action="store_true", help="py-spy --native")
    parser.add_argument(
        "--stages",
        action="store_true",
        help="instead: the loop's CPU per stage, in process (bench/semantic_stages.py)",
    )
    parser.add_argument(
        "--cprofile", type=int, default=0, help="with --stages: cProfile N passes at c=16"
    )
    parser.add_argument("--top", type=int, default=30, help="frames in the flame summary")
    asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    main()
