"""`python -m bench.load`: a bounded load test of Sentinel on loopback; writes bench/load.md.

    python -m bench.load [--requests 20000] [--concurrency 64] [--restart-redis-at SECONDS]

A fresh Redis Stack, the fake provider (in its own process, answering in 0.5 to 1.5 s) and a
fresh Sentinel process. Warm-up stores a set of questions and checks which paraphrases the
service serves as semantic hits on their own question; then the measured phase sends a
shuffled mix: ~50% exact repeats of stored questions, ~30% of those paraphrases, ~20% new
questions (misses), at the given concurrency over keep-alive connections. It reports
throughput, latency per kind served (X-Sentinel-Cache), errors, and Sentinel's VmRSS after
start, after warm-up and at the end.

With `--restart-redis-at S` the Redis server is SIGKILLed S seconds into the measured phase
and restarted on the same port and data dir (AOF on, unless --no-aof) about 3 s later; the
report adds the errors during the outage, a per-second timeline with /health, and the
recovery time (the first exact hit served from the cache after the restart, minus the time
Redis answered PING again).

Every request carries `Authorization: Bearer unused` (`--api-key`), as the OpenAI SDK does
with the README's snippet: in open mode the key is ignored without asking Redis, so an
outage must not fail it.

Each mode writes its own section of the output file and leaves the other's in place.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import numpy as np

from app.embedded_redis import EmbeddedRedis
from app.errors import EmptyPrompt
from app.providers.embedders.local import LocalEmbedder
from app.service.guard import configured_decision
from app.service.prompt import normalize_prompt
from app.settings import load_settings
from bench.procs import (
    BENCH_VAR,
    ROOT,
    bench_redis,
    fake_provider,
    sentinel,
)
from bench.questions import DEV_PAIRS, MAX_CHARS, Pair, candidate_pairs, choose_pairs
from bench.stats import Summary, Table, ms

HERE = Path(__file__).resolve().parent
DELAY_MIN, DELAY_MAX = 0.5, 1.5
PAIRS = 300
WARM_EXTRA = 700
EXACT_SHARE, SEMANTIC_SHARE = 0.5, 0.3
REQUEST_TIMEOUT = 30.0
RSS_EVERY = 5.0
HEALTH_EVERY = 0.5
PROGRESS_EVERY = 10.0
MIB = 1024 * 1024
_ENCODER = msgspec.json.Encoder()
_JSON = {"Content-Type": "application/json"}
# The order rows appear in; anything else the service sends comes after.
SERVED_ORDER = ("HIT-EXACT", "HIT-SEMANTIC", "MISS", "BYPASS")


def say(line: str) -> None:
    """A progress line on stderr."""
    print(line, file=sys.stderr, flush=True)


# --- one request ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Shot:
    """One POST /v1/query as the client saw it; times in seconds since the phase began."""

    kind: str  # what it was sent as: warm, verify, exact, semantic, new
    prompt: str
    started: float
    ended: float
    status: int  # 0: no HTTP response at all
    cache: str  # X-Sentinel-Cache
    matched: str | None
    waited: bool
    error: str | None

    @property
    def latency_ms(self) -> float:
        return (self.ended - self.started) * 1000

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def served(self) -> str:
        """The X-Sentinel-Cache value of a 200, else `HTTP <status>` or the client's failure."""
        if self.status == 200:
            return self.cache or "200 without X-Sentinel-Cache"
        if self.status:
            return f"HTTP {self.status}"
        return (self.error or "no response").split(":", 1)[0]


async def post(session: aiohttp.ClientSession, url: str, kind: str, prompt: str, t0: float) -> Shot:
    """Send one prompt; never raises for an HTTP or connection failure (it is in the Shot)."""
    body = _ENCODER.encode({"prompt": prompt})
    status, cache, matched, waited, error = 0, "", None, False, None
    started = time.perf_counter()
    try:
        async with session.post(url, data=body, headers=_JSON) as response:
            raw = await response.read()
            status = response.status
            cache = response.headers.get("X-Sentinel-Cache", "")
            waited = response.headers.get("X-Sentinel-Waited") == "true"
        if status == 200:
            data: dict[str, Any] = msgspec.json.decode(raw)
            matched = data.get("matched_prompt")
            if not cache:
                cache = f"match={data.get('match')}"
        else:
            error = raw[:300].decode(errors="replace")
    except (aiohttp.ClientError, TimeoutError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    ended = time.perf_counter()
    return Shot(kind, prompt, started - t0, ended - t0, status, cache, matched, waited, error)


def client(concurrency: int, api_key: str) -> aiohttp.ClientSession:
    """Keep-alive, at most `concurrency` connections, each request with `api_key` if any."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency),
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
        headers={"Authorization": f"Bearer {api_key}"} if api_key else None,
    )


async def blast(
    url: str,
    items: Sequence[tuple[str, str]],
    concurrency: int,
    t0: float,
    *,
    deadline: float = math.inf,
    label: str = "",
    api_key: str = "",
) -> list[Shot]:
    """(kind, prompt) items over `concurrency` workers; no new request after `deadline`."""
    shots: list[Shot] = []
    queue = iter(items)

    async def progress() -> None:
        last = 0
        while True:
            await asyncio.sleep(PROGRESS_EVERY)
            done = len(shots)
            errors = sum(1 for s in shots if not s.ok)
            say(
                f"  [{label}] t={time.perf_counter() - t0:6.1f}s {done:>6}/{len(items)} "
                f"({(done - last) / PROGRESS_EVERY:6.1f} req/s) errors {errors}"
            )
            last = done

    async with client(concurrency, api_key) as session:

        async def worker() -> None:
            for kind, prompt in queue:
                if time.perf_counter() - t0 > deadline:
                    return
                shots.append(await post(session, url, kind, prompt, t0))

        reporter = asyncio.create_task(progress())
        try:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        finally:
            reporter.cancel()
            with suppress(asyncio.CancelledError):
                await reporter
    return shots


# --- processes ------------------------------------------------------------------------------


def child_pid(module: str) -> int:
    """The pid of our child `python -m MODULE` (bench.procs.sentinel keeps its Child to itself)."""
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == me and argv[1:3] == [b"-m", module.encode()]:
            return int(entry.name)
    raise RuntimeError(f"no child `python -m {module}` of pid {me}")


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in bytes."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0]) * 1024
    return found


def mib(value: float) -> str:
    return f"{value / MIB:.1f}"


# --- the questions --------------------------------------------------------------------------


def all_questions(path: Path) -> list[str]:
    """Every question of the dev pairs that is not a paraphrase of another (normalized, once).

    A label=1 pair's second question is left out: it would be a semantic hit on its first.
    """
    seen: set[str] = set()
    out: list[str] = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            texts = [record["question1"]]
            if record.get("label") != 1:
                texts.append(record["question2"])
            for text in texts:
                try:
                    prompt = normalize_prompt(text)
                except EmptyPrompt:
                    continue
                if len(prompt) <= MAX_CHARS and prompt not in seen:
                    seen.add(prompt)
                    out.append(prompt)
    return out


@dataclass
class Workload:
    """The questions each phase sends."""

    pairs: list[Pair]
    warm: list[str]
    new: list[str]
    notes: list[str] = field(default_factory=list)


async def build_workload(requests: int, seed: int) -> tuple[Workload, str]:
    """Pairs the bench's own embedder expects to hit, warm-only questions, new questions."""
    if not DEV_PAIRS.is_file():
        raise SystemExit(f"bench.load needs the dev pairs at {DEV_PAIRS}")
    settings = load_settings({})
    say("loading the local embedder to choose paraphrase pairs")
    embedder = await LocalEmbedder.load()
    try:
        candidates, source_note = candidate_pairs()
        guard, floor = configured_decision(settings, embedder.id)
        pairs = await choose_pairs(
            embedder, candidates, want=PAIRS, threshold=floor, guard=guard, seed=seed
        )
        decision = (
            f"cosine floor {floor}, guard {'off' if guard is None else f'p >= {guard.threshold}'}"
        )
    finally:
        await embedder.aclose()
    used = {p.original for p in pairs} | {p.paraphrase for p in pairs}
    pool = [q for q in all_questions(DEV_PAIRS) if q not in used]
    order = np.random.default_rng(seed + 1).permutation(len(pool))
    pool = [pool[int(i)] for i in order]
    want_new = requests - round(requests * EXACT_SHARE) - round(requests * SEMANTIC_SHARE)
    warm, new = pool[:WARM_EXTRA], pool[WARM_EXTRA : WARM_EXTRA + want_new]
    workload = Workload(pairs, [p.original for p in pairs] + warm, new)
    workload.notes.append(
        f"questions from {source_note}; {len(pairs)} pairs chosen with the bench's embedder "
        f"({decision}), {len(warm)} more questions warmed, {len(new):,} new questions "
        f"for misses out of {len(pool):,} unused"
    )
    if len(new) < want_new:
        workload.notes.append(
            f"only {len(new):,} unused questions for {want_new:,} misses: the rest repeat them"
        )
    return workload, decision


def mix(
    requests: int, exact: Sequence[str], semantic: Sequence[str], new: Sequence[str], seed: int
) -> list[tuple[str, str]]:
    """The measured phase's (kind, prompt) list, shuffled."""
    rng = np.random.default_rng(seed + 2)
    n_exact = round(requests * EXACT_SHARE)
    n_semantic = round(requests * SEMANTIC_SHARE)
    n_new = requests - n_exact - n_semantic
    items = [("exact", exact[int(i)]) for i in rng.integers(0, len(exact), n_exact)]
    items += [("semantic", semantic[int(i)]) for i in rng.integers(0, len(semantic), n_semantic)]
    items += [("new", new[i % len(new)]) for i in range(n_new)]
    order = rng.permutation(len(items))
    return [items[int(i)] for i in order]


# --- Redis restart and /health --------------------------------------------------------------


@dataclass
class Outage:
    """When the Redis restart happened, in seconds since the measured phase began."""

    kill_at: float = math.nan
    restart_at: float = math.nan
    ready_at: float = math.nan
    failure: str | None = None
    health: list[tuple[float, int, str]] = field(default_factory=list)


async def restart_redis(
    server: EmbeddedRedis, at: float, pause: float, t0: float, outage: Outage
) -> None:
    """SIGKILL the server `at` seconds after t0, start it again `pause` seconds later."""
    try:
        await asyncio.sleep(max(0.0, at - (time.perf_counter() - t0)))
        pid = server.pid
        if pid is None:
            raise RuntimeError("the bench Redis has no pid (not started by us)")
        os.kill(pid, signal.SIGKILL)
        outage.kill_at = time.perf_counter() - t0
        say(f"  SIGKILL Redis (pid {pid}) at t={outage.kill_at:.1f}s")
        await asyncio.sleep(pause)
        await server.stop()  # reaps the killed process and forgets it
        outage.restart_at = time.perf_counter() - t0
        await server.start(timeout=120.0)
        outage.ready_at = time.perf_counter() - t0
        say(f"  Redis restarted (pid {server.pid}), answering PING at t={outage.ready_at:.1f}s")
    except Exception as exc:
        outage.failure = f"{type(exc).__name__}: {exc}"
        say(f"  Redis restart failed: {outage.failure}")


async def watch_health(base_url: str, t0: float, outage: Outage) -> None:
    """GET /health every HEALTH_EVERY seconds until cancelled: (t, status, body status)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as session:
        while True:
            at = time.perf_counter() - t0
            try:
                async with session.get(f"{base_url}/health") as response:
                    raw = await response.read()
                    try:
                        state = str(msgspec.json.decode(raw).get("status", "?"))
                    except (msgspec.DecodeError, AttributeError):
                        state = "?"
                    outage.health.append((at, response.status, state))
            except (aiohttp.ClientError, TimeoutError) as exc:
                outage.health.append((at, 0, type(exc).__name__))
            await asyncio.sleep(HEALTH_EVERY)


async def sample_rss(pid: int, t0: float, samples: list[tuple[float, int]]) -> None:
    """VmRSS every RSS_EVERY seconds until cancelled."""
    while True:
        samples.append((time.perf_counter() - t0, memory(pid)["VmRSS"]))
        await asyncio.sleep(RSS_EVERY)


# --- one run --------------------------------------------------------------------------------


@dataclass
class Run:
    """Everything one run measured."""

    mode: str
    command: str
    args: argparse.Namespace
    decision: str = ""
    notes: list[str] = field(default_factory=list)
    warm: list[Shot] = field(default_factory=list)
    verify: list[Shot] = field(default_factory=list)
    shots: list[Shot] = field(default_factory=list)
    wall: float = math.nan
    stopped_early: bool = False
    rss: dict[str, int] = field(default_factory=dict)
    rss_samples: list[tuple[float, int]] = field(default_factory=list)
    outage: Outage | None = None
    load_start: str = ""
    load_end: str = ""
    started_utc: str = ""
    elapsed: float = math.nan
    servers: str = ""
    log_lines: dict[str, int] = field(default_factory=dict)


def load_average() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def log_counts(path: Path) -> dict[str, int]:
    """Lines in Sentinel's log by level word (WARNING, ERROR, Traceback)."""
    counts: Counter[str] = Counter()
    with suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            for word in ("WARNING", "ERROR", "CRITICAL", "Traceback"):
                if word in line:
                    counts[word] += 1
    return dict(counts)


async def run(args: argparse.Namespace, command: str) -> Run:
    """Set up, warm up, send the mix (killing Redis on the way if asked), measure."""
    mode = "restart" if args.restart_redis_at is not None else "normal"
    result = Run(mode, command, args)
    result.started_utc = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    result.load_start = load_average()
    begun = time.monotonic()
    workload, result.decision = await build_workload(args.requests, args.seed)
    result.notes += workload.notes
    appendonly = mode == "restart" and not args.no_aof
    name = f"load-{mode}"
    async with (
        bench_redis(name, appendonly=appendonly) as redis,
        fake_provider(DELAY_MIN, DELAY_MAX) as provider,
        sentinel(name, redis_url=redis.url, provider_url=provider) as base,
    ):
        sent = f"`Authorization: Bearer {args.api_key}`" if args.api_key else "no API key"
        result.servers = (
            f"Redis on {redis.url}, AOF {'on' if appendonly else 'off'}; Sentinel open "
            f"(SENTINEL_AUTH unset, no key setting); every request sends {sent}"
        )
        url = f"{base}/v1/query"
        pid = child_pid("app")
        result.rss["after start"] = memory(pid)["VmRSS"]

        t_warm = time.perf_counter()
        say(f"warm-up: storing {len(workload.warm)} questions at c={args.concurrency}")
        result.warm = await blast(
            url,
            [("warm", q) for q in workload.warm],
            args.concurrency,
            t_warm,
            label="warm",
            api_key=args.api_key,
        )
        say(f"warm-up: {len(workload.pairs)} paraphrases at c={args.concurrency}")
        result.verify = await blast(
            url,
            [("verify", p.paraphrase) for p in workload.pairs],
            args.concurrency,
            t_warm,
            label="verify",
            api_key=args.api_key,
        )
        stored = {s.prompt for s in result.warm if s.ok and s.cache == "MISS"}
        exact = [q for q in workload.warm if q in stored]
        originals = {p.paraphrase: p.original for p in workload.pairs}
        semantic = [
            s.prompt
            for s in result.verify
            if s.ok and s.cache == "HIT-SEMANTIC" and s.matched == originals[s.prompt]
        ]
        result.notes.append(
            f"warm-up: {len(exact)} of {len(workload.warm)} questions stored (served MISS), "
            f"{len(semantic)} of {len(workload.pairs)} paraphrases served HIT-SEMANTIC on their "
            f"own question (kept for the semantic share); warm-up served "
            f"{dict(Counter(s.served for s in result.warm))}, paraphrases "
            f"{dict(Counter(s.served for s in result.verify))}"
        )
        if not exact or not semantic:
            raise RuntimeError(f"warm-up left nothing to repeat: {result.notes[-1]}")
        result.rss["after warm-up"] = memory(pid)["VmRSS"]

        items = mix(args.requests, exact, semantic, workload.new, args.seed)
        say(f"measured phase: {len(items):,} requests at c={args.concurrency} ({mode})")
        t0 = time.perf_counter()
        background = [asyncio.create_task(sample_rss(pid, t0, result.rss_samples))]
        if mode == "restart":
            result.outage = Outage()
            background.append(
                asyncio.create_task(
                    restart_redis(
                        redis, args.restart_redis_at, args.restart_pause, t0, result.outage
                    )
                )
            )
            background.append(asyncio.create_task(watch_health(base, t0, result.outage)))
        try:
            result.shots = await blast(
                url,
                items,
                args.concurrency,
                t0,
                deadline=args.time_limit,
                label=mode,
                api_key=args.api_key,
            )
            result.wall = time.perf_counter() - t0
            if result.outage is not None and math.isnan(result.outage.ready_at):
                # The mix ended before the restart finished: let it finish (it is bounded).
                await background[1]
        finally:
            for task in background:
                task.cancel()
            for task in background:
                with suppress(asyncio.CancelledError):
                    await task
        result.stopped_early = len(result.shots) < len(items)
        status = memory(pid)
        result.rss["end"] = status["VmRSS"]
        result.rss["peak (VmHWM)"] = status["VmHWM"]
        log_path = BENCH_VAR / f"{name}.log"
    result.log_lines = log_counts(log_path)
    result.load_end = load_average()
    result.elapsed = time.monotonic() - begun
    return result


# --- the report -----------------------------------------------------------------------------


def served_order(labels: Sequence[str]) -> list[str]:
    rest = sorted(set(labels) - set(SERVED_ORDER))
    return [x for x in SERVED_ORDER if x in labels] + rest


def latency_table(run_: Run) -> Table:
    shots = run_.shots
    table = Table(
        "Throughput and latency by what the service served",
        ["served (X-Sentinel-Cache)", "n", "share", "p50 ms", "p99 ms", "mean ms"],
    )
    tally = Counter(s.served for s in shots)
    for label in served_order(list(tally)):
        chosen = [s.latency_ms for s in shots if s.served == label]
        summary = Summary.of(chosen)
        table.add(
            label,
            f"{summary.n:,}",
            f"{summary.n / len(shots):.1%}",
            ms(summary.p50),
            ms(summary.p99),
            ms(summary.mean),
        )
    everything = Summary.of([s.latency_ms for s in shots])
    table.add(
        "**all**",
        f"{everything.n:,}",
        "100%",
        ms(everything.p50),
        ms(everything.p99),
        ms(everything.mean),
    )
    throughput = len(shots) / run_.wall if run_.wall > 0 else math.nan
    table.notes.append(
        f"**throughput {throughput:.1f} req/s**: {len(shots):,} requests in {run_.wall:.1f} s "
        f"at concurrency {run_.args.concurrency} (closed loop: each worker sends its next "
        "request when the last one is answered, so misses at 0.5-1.5 s cap the rate)"
    )
    waited = sum(1 for s in shots if s.waited)
    if waited:
        table.notes.append(
            f"{waited:,} HIT-EXACT answers were shared from an identical request in flight "
            "(X-Sentinel-Waited)"
        )
    if run_.stopped_early:
        table.notes.append(
            f"**stopped at the time limit** ({run_.args.time_limit:g} s) after "
            f"{len(shots):,} of {run_.args.requests:,} requests"
        )
    table.notes.append(
        "latency is the client's, from sending the request to the last byte of the body; "
        "the client runs on the same 2 cores as Sentinel, Redis and the fake provider"
    )
    return table


def kinds_table(shots: Sequence[Shot]) -> Table:
    labels = served_order([s.served for s in shots])
    table = Table("What each kind of request was served", ["sent as", "n", *labels])
    for kind in ("exact", "semantic", "new"):
        chosen = [s for s in shots if s.kind == kind]
        tally = Counter(s.served for s in chosen)
        table.add(kind, f"{len(chosen):,}", *(f"{tally[x]:,}" for x in labels))
    table.notes.append(
        "exact: a stored question again; semantic: a paraphrase that warm-up saw served as a "
        "semantic hit on its own question; new: a question not asked before"
    )
    return table


def error_table(shots: Sequence[Shot], title: str = "Errors") -> Table:
    failed = [s for s in shots if not s.ok]
    table = Table(title, ["status / failure", "n", "first body or message"])
    for label, n in Counter(s.served for s in failed).most_common():
        first = next(s for s in failed if s.served == label)
        text = (first.error or "").replace("\n", " ").replace("|", "\\|")[:160]
        table.add(label, f"{n:,}", f"`{text}`" if text else "")
    if not failed:
        table.add("none", "0", "")
    return table


def memory_table(run_: Run) -> Table:
    table = Table("Sentinel's memory (VmRSS of the `python -m app` process)", ["when", "MiB"])
    for when, value in run_.rss.items():
        table.add(when, mib(value))
    warm, end = run_.rss.get("after warm-up"), run_.rss.get("end")
    if warm and end:
        growth = end - warm
        table.notes.append(
            f"growth from after warm-up to the end: {growth / MIB:+.1f} MiB ({growth / warm:+.1%}) "
            f"over {len(run_.shots):,} requests"
        )
    if run_.rss_samples:
        values = [v for _, v in run_.rss_samples]
        every = max(1, len(run_.rss_samples) // 12)
        shown = ", ".join(f"{t:.0f}s {mib(v)}" for t, v in run_.rss_samples[::every])
        table.notes.append(
            f"during the measured phase, every {RSS_EVERY:g} s: min {mib(min(values))}, max "
            f"{mib(max(values))} MiB ({shown})"
        )
    return table


def _first(shots: Sequence[Shot], served: str, after: float) -> Shot | None:
    found = [s for s in shots if s.served == served and s.started >= after]
    return min(found, key=lambda s: s.ended) if found else None


def outage_tables(run_: Run) -> list[Table]:
    outage = run_.outage
    if outage is None:
        return []
    shots = run_.shots
    table = Table("Redis killed and restarted", ["event", "t (s into the measured phase)"])
    table.add("SIGKILL to redis-server", f"{outage.kill_at:.2f}")
    table.add("restart begun (same port and dir)", f"{outage.restart_at:.2f}")
    table.add("Redis answering PING again", f"{outage.ready_at:.2f}")
    if outage.failure:
        table.notes.append(f"**the restart failed**: {outage.failure}")
    after = outage.kill_at
    for served in ("HIT-EXACT", "HIT-SEMANTIC", "MISS", "BYPASS"):
        first = _first(shots, served, after)
        table.add(
            f"first {served} answered for a request sent after the kill",
            "-" if first is None else f"{first.ended:.2f}",
        )
    first_exact = next(
        (
            s
            for s in sorted(shots, key=lambda s: s.ended)
            if s.served == "HIT-EXACT" and s.started >= after and s.ended >= outage.ready_at
        ),
        None,
    )
    recovery = math.nan if first_exact is None else first_exact.ended - outage.ready_at
    table.add(
        "**recovery time** (first HIT-EXACT after the restart, minus PING again)",
        "never" if first_exact is None else f"**{recovery:.2f} s**",
    )
    during = [s for s in shots if s.ended >= outage.kill_at and s.started <= outage.ready_at]
    later = [s for s in shots if s.started > outage.ready_at]
    before = [s for s in shots if s.ended < outage.kill_at]
    table.notes.append(
        f"before the kill: {len(before):,} requests, {sum(not s.ok for s in before):,} errors; "
        f"during the outage (answered after the kill, sent before PING again): {len(during):,} "
        f"requests, **{sum(not s.ok for s in during):,} errors**, served "
        f"{dict(Counter(s.served for s in during).most_common())}; after: {len(later):,} "
        f"requests, **{sum(not s.ok for s in later):,} errors**"
    )
    if outage.health:
        states = Counter(f"{code} {state}" for _, code, state in outage.health)
        table.notes.append(
            f"/health every {HEALTH_EVERY:g} s during the phase: {dict(states.most_common())}"
        )
    tables = [table, error_table(during + later, "Errors from the kill on")]
    tables.append(timeline(run_, outage, recovery))
    return tables


def timeline(run_: Run, outage: Outage, recovery: float) -> Table:
    """Per-second counts around the outage, by the second each request was answered."""
    labels = served_order([s.served for s in run_.shots])
    table = Table(
        "Timeline around the outage (requests by the second they were answered)",
        ["t (s)", "event", *labels, "/health"],
    )
    start = math.floor(outage.kill_at) - 2
    end_at = outage.ready_at + (recovery if recovery == recovery else 5.0) + 4
    stop = min(math.ceil(end_at), math.ceil(run_.wall))
    if stop - start > 40:
        stop = start + 40
    events = {
        math.floor(outage.kill_at): "kill",
        math.floor(outage.restart_at): "restart",
        math.floor(outage.ready_at): "PING ok",
    }
    for second in range(max(0, start), stop):
        tally = Counter(s.served for s in run_.shots if second <= s.ended < second + 1)
        health = Counter(
            f"{code} {state}" for t, code, state in outage.health if second <= t < second + 1
        )
        event = ", ".join(e for at, e in events.items() if at == second)
        table.add(
            second,
            event,
            *(str(tally[x]) if tally[x] else "" for x in labels),
            ", ".join(health),
        )
    return table


def section(run_: Run) -> str:
    args = run_.args
    title = (
        "Normal run"
        if run_.mode == "normal"
        else f"Redis SIGKILLed at {args.restart_redis_at:g} s, restarted "
        f"{args.restart_pause:g} s later"
    )
    lines = [f"## {title}", ""]
    lines.append(f"- command: `{run_.command}` (from {ROOT})")
    lines.append(
        f"- date: {run_.started_utc}; machine: {os.cpu_count()} cores, load average "
        f"(1/5/15 min) {run_.load_start} at start, {run_.load_end} at end; whole run "
        f"{run_.elapsed / 60:.1f} min"
    )
    lines.append(
        f"- setup: fresh {run_.servers}; fake provider in its own process, each answer after "
        f"uniform {DELAY_MIN:g}-{DELAY_MAX:g} s; a fresh Sentinel (`python -m app`, one uvicorn "
        f"worker, defaults, open mode); {run_.decision}; mix {EXACT_SHARE:.0%} exact repeats, "
        f"{SEMANTIC_SHARE:.0%} paraphrases, {1 - EXACT_SHARE - SEMANTIC_SHARE:.0%} new questions, "
        f"shuffled (seed {args.seed})"
    )
    lines.extend(f"- {note}" for note in run_.notes)
    warm_errors = sum(not s.ok for s in run_.warm + run_.verify)
    if warm_errors:
        lines.append(f"- **{warm_errors} errors during warm-up**")
    logs = run_.log_lines
    lines.append(
        "- Sentinel's log: "
        + (", ".join(f"{n} {word} lines" for word, n in logs.items()) if logs else "no warnings")
    )
    lines.append("")
    tables = [latency_table(run_), kinds_table(run_.shots)]
    if run_.outage is None:
        tables.append(error_table(run_.shots))
    else:
        before = [s for s in run_.shots if s.ended < run_.outage.kill_at]
        tables.append(error_table(before, "Errors before the kill"))
        tables += outage_tables(run_)
    tables.append(memory_table(run_))
    return "\n".join(lines) + "\n" + "\n".join(t.markdown() for t in tables)


HEADER = """# Load test

Written by `python -m bench.load` (bench/load.py): each mode rewrites its own section and
leaves the other's. Loopback only; a fresh Redis Stack, fake provider and Sentinel each run.
Medians (p50) are the numbers to quote: the machine is a shared 2-core box, so p99 moves
with whatever else runs on it.
"""


MODES = ("normal", "restart")


def _markers(mode: str) -> tuple[str, str]:
    return f"<!-- bench.load:{mode} -->", f"<!-- /bench.load:{mode} -->"


def write(output: Path, mode: str, text: str) -> None:
    """Replace this mode's section of `output` (or add it); the normal run's section first."""
    current = output.read_text() if output.is_file() else ""
    blocks: dict[str, str] = {}
    for name in MODES:
        begin, end = _markers(name)
        if begin in current and end in current:
            blocks[name] = current.partition(begin)[2].partition(end)[0].strip("\n")
    blocks[mode] = text.rstrip()
    head = current.partition("<!-- bench.load:")[0].rstrip() or HEADER.rstrip()
    parts = [head]
    for name in MODES:
        if name in blocks:
            begin, end = _markers(name)
            parts.append(f"{begin}\n{blocks[name]}\n{end}")
    output.write_text("\n\n".join(parts) + "\n")


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--restart-redis-at",
        type=float,
        default=None,
        metavar="SECONDS",
        help="SIGKILL Redis this many seconds into the measured phase, restart it",
    )
    parser.add_argument("--restart-pause", type=float, default=3.0, help="seconds Redis stays down")
    parser.add_argument(
        "--no-aof", action="store_true", help="restart mode: Redis without AOF (loses the data)"
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=420.0,
        help="no new request after this many seconds of the measured phase",
    )
    parser.add_argument(
        "--api-key",
        default="unused",
        help="sent as `Authorization: Bearer KEY` (the OpenAI SDK's placeholder); '' sends none",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--output", default=str(HERE / "load.md"))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    command = "python -m bench.load" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
    result = asyncio.run(run(args, command))
    text = section(result)
    print(text, flush=True)
    write(Path(args.output), result.mode, text)
    say(f"wrote {args.output} ({result.mode}) in {result.elapsed / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
