"""`python -m bench.throughput [--quick]`: issue 15's table, measured in one run.

Sentinel (`python -m app` as `make run` serves it: WEB_CONCURRENCY passed through when set,
else app/serving.py's default of one worker per two cores) against a trivial HTTP server (the floor)
and an in-process embed + KNN of the same model on the same Redis: exact and semantic hits,
p50 at concurrency 1 and hits/s at concurrency 16, three interleaved repetitions, medians.
A second Sentinel with the other worker count (one per core; one where that is the default)
is measured beside it in the same repetitions. Writes bench/throughput.md with the ratios the
issue's targets use (on the default Sentinel; the comparison Sentinel's beside them).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from redis.asyncio import Redis

from app.cache.store import CacheStore
from app.lifespan import connect_redis
from app.providers.embedders.local import LocalEmbedder
from app.service.guard import configured_decision
from app.serving import MAX_WORKERS, worker_count
from app.settings import load_settings
from bench.procs import ROOT, bench_redis, fake_provider
from bench.questions import Pair, candidate_pairs, choose_pairs
from bench.run import machine_table, say, server_versions
from bench.stats import Table
from bench.tput_http import (
    Run,
    SentinelInfo,
    chat_body,
    load,
    serve_sentinel,
    serve_trivial,
    server_stack,
)
from bench.tput_inproc import OpRun, RedisvlCache, drive, embed_knn, entry_scope, settings_line
from bench.tput_report import Ratio, plural, write_report

HERE = Path(__file__).resolve().parent
C16 = 16
CHECK_SCOPE = 512  # max_tokens of the scope for the exact phase and the paraphrase check
# The one-worker Sentinel's semantic scopes (max_tokens) start this far above the default's:
# a paraphrase asked once leaves an alias, so the two must never ask in the same scope.
OTHER_SCOPES = 100
OTHER = "alt_"  # sample-key prefix of the comparison Sentinel's measurements


@dataclass(frozen=True)
class Plan:
    """Requests per measurement (each one repeated `reps` times)."""

    reps: int
    trivial_c1: int
    trivial_c16: int
    exact_c1: int
    exact_c16: int
    first_c1: int  # first-time paraphrases at c=1; the rest of them go to c=16
    repeat_c1: int
    repeat_c16: int
    inproc_c1: int
    inproc_c16: int
    # Fresh scopes per repetition for first-time paraphrases at c=16 (each warmed first).
    first_scopes: int = 1
    pairs: int = 200
    delay: float = 0.3


FULL = Plan(3, 1500, 15000, 600, 5000, 50, 200, 1200, 200, 1200, first_scopes=3)
QUICK = Plan(3, 400, 2000, 200, 1000, 40, 80, 400, 80, 400)

# Metric keys: (what, kind) with kind "p50" (ms at c=1) or "rate" (per s at c=16).
SYSTEMS = {
    "trivial": "trivial Python HTTP server (floor: raw ASGI on uvicorn, answers every call)",
    "inproc": "in-process embed + KNN (LocalEmbedder + CacheStore.nearest, same index)",
    "redisvl": "redisvl SemanticCache in process (CustomVectorizer on LocalEmbedder)",
    "sentinel": "**Sentinel** (`/v1/chat/completions`, `python -m app` as `make run`: {workers}), "
    "first-time paraphrases",
    "sentinel_repeat": "Sentinel ({workers}), the same paraphrases asked again (repeated)",
    "alt_sentinel": "Sentinel with WEB_CONCURRENCY={other} (for comparison), first-time "
    "paraphrases",
    "alt_sentinel_repeat": "Sentinel with WEB_CONCURRENCY={other}, the same paraphrases asked "
    "again",
}
RATIOS = [
    Ratio("exact hits/s ÷ trivial req/s (c=16)", "exact_rate", "trivial_rate", 0.40, True, "0.12"),
    Ratio("exact p50 ÷ trivial p50 (c=1)", "exact_p50", "trivial_p50", 3.0, False, "5.3"),
    Ratio(
        "semantic hits/s ÷ in-process ops/s (c=16)", "first_rate", "inproc_rate", 0.80, True, "0.63"
    ),
    Ratio("semantic p50 ÷ in-process p50 (c=1)", "first_p50", "inproc_p50", 1.25, False, "1.29"),
    Ratio("repeated-paraphrase hits/s ÷ in-process ops/s", "repeat_rate", "inproc_rate"),
    Ratio("repeated-paraphrase p50 ÷ in-process p50", "repeat_p50", "inproc_p50"),
    Ratio("Sentinel semantic hits/s ÷ redisvl ops/s (c=16)", "first_rate", "redisvl_rate"),
    Ratio("Sentinel semantic p50 ÷ redisvl p50 (c=1)", "first_p50", "redisvl_p50"),
]


@dataclass
class Context:
    """What every repetition works on."""

    plan: Plan
    pairs: list[Pair]
    trivial_url: str
    sentinel: SentinelInfo
    other: SentinelInfo
    embedder: LocalEmbedder
    redis: Redis
    store: CacheStore
    scope: str
    floor: float
    top_k: int
    redisvl: RedisvlCache | None
    samples: list[dict[str, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    hit_counts: list[str] = field(default_factory=list)


def _cycle(items: list[bytes], n: int) -> list[bytes]:
    return [items[i % len(items)] for i in range(n)]


def _bodies(questions: list[str], scope: int) -> list[bytes]:
    return [chat_body(q, scope) for q in questions]


async def warm(url: str, questions: list[str], scope: int, notes: list[str]) -> dict[str, str]:
    """Store every question in that scope: one pass at c=16 (misses), then passes at c=1 until
    each is an exact hit (an answer the service did not store, e.g. while its breaker was open,
    is a miss again and stored then); returns question → entry id."""
    first = await load(url, _bodies(questions, scope), C16)
    if first.count("MISS") != len(questions):
        notes.append(f"warming scope max_tokens={scope} at c=16: {first.others('MISS')} (retried)")
    deadline = time.monotonic() + 60.0
    while True:
        again = await load(url, _bodies(questions, scope), 1)
        if again.count("HIT-EXACT") == len(questions):
            return {q: shot.entry for q, shot in zip(questions, again.shots, strict=True)}
        if time.monotonic() > deadline:
            raise RuntimeError(f"scope {scope} not all exact hits: {again.others('HIT-EXACT')}")


async def check_paraphrases(ctx: Context, candidates: list[Pair]) -> list[Pair]:
    """Paraphrases that Sentinel serves from their own question's entry (asked once each, in
    the check scope, which no measurement of semantic hits uses afterwards)."""
    url = ctx.sentinel.url
    entries = await warm(url, [p.original for p in candidates], CHECK_SCOPE, ctx.notes)
    run = await load(url, _bodies([p.paraphrase for p in candidates], CHECK_SCOPE), 1)
    verified = [
        p
        for p, shot in zip(candidates, run.shots, strict=True)
        if shot.cache == "HIT-SEMANTIC" and shot.entry == entries[p.original]
    ]
    ctx.scope = await entry_scope(ctx.redis, ctx.store, entries[candidates[0].original])
    ctx.notes.append(
        f"paraphrase check (each asked once over HTTP): {len(verified)} of {len(candidates)} "
        f"were semantic hits on their own question; others: {run.others('HIT-SEMANTIC')}"
    )
    return verified


def _record(sample: dict[str, float], prefix: str, c1: Run | OpRun, c16: Run | OpRun) -> None:
    what = prefix.removeprefix(OTHER)
    kind = {"trivial": None, "exact": "HIT-EXACT"}.get(what, "HIT-SEMANTIC")
    sample[f"{prefix}_p50"] = c1.latency_of(kind).p50
    sample[f"{prefix}_rate"] = c16.rate_of(kind)


async def repetition(ctx: Context, rep: int) -> None:
    """One pass over every measurement; the semantic ones in scopes of their own. The two
    Sentinels take turns going first."""
    plan = ctx.plan
    sample: dict[str, float] = {}
    paraphrases = [p.paraphrase for p in ctx.pairs]
    exact = _bodies([p.original for p in ctx.pairs], CHECK_SCOPE)
    probe = exact[0]  # warms each connection untimed (the trivial server answers anything)

    async def http(name: str, url: str, bodies: list[bytes], c: int) -> Run:
        say(f"  rep {rep}: {name} ({len(bodies)} requests, c={c})")
        return await load(url, bodies, c, probe)

    async def ops(name: str, op: Callable[[int], Awaitable[bool]], n: int, c: int) -> OpRun:
        say(f"  rep {rep}: {name} ({n} ops, c={c})")
        return await drive(op, n, c)

    _record(
        sample,
        "trivial",
        await http("trivial c=1", ctx.trivial_url, _cycle(exact, plan.trivial_c1), 1),
        await http("trivial c=16", ctx.trivial_url, _cycle(exact, plan.trivial_c16), C16),
    )
    turns = [("", ctx.sentinel, 0), (OTHER, ctx.other, OTHER_SCOPES)]
    for prefix, info, offset in turns if rep % 2 else turns[::-1]:
        await sentinel_phases(ctx, rep, sample, http, prefix, info.url, CHECK_SCOPE + offset)
    knn = embed_knn(
        ctx.embedder, ctx.store, scope=ctx.scope, k=ctx.top_k, floor=ctx.floor, texts=paraphrases
    )
    _record(
        sample,
        "inproc",
        await ops("in-process embed+KNN c=1", knn, plan.inproc_c1, 1),
        await ops("in-process embed+KNN c=16", knn, plan.inproc_c16, C16),
    )
    if ctx.redisvl is not None:
        check = ctx.redisvl.check(paraphrases)
        _record(
            sample,
            "redisvl",
            await ops("redisvl acheck c=1", check, plan.inproc_c1, 1),
            await ops("redisvl acheck c=16", check, plan.inproc_c16, C16),
        )
    ctx.samples.append(sample)


async def sentinel_phases(
    ctx: Context,
    rep: int,
    sample: dict[str, float],
    http: Callable[[str, str, list[bytes], int], Awaitable[Run]],
    prefix: str,
    url: str,
    base: int,
) -> None:
    """One Sentinel's exact, first-time and repeated semantic measurements (sample keys
    `prefix` + exact/first/repeat); its semantic scopes are max_tokens `base` + 10 rep + j."""
    plan = ctx.plan
    who = "Sentinel, comparison" if prefix else "Sentinel, default"
    originals = [p.original for p in ctx.pairs]
    paraphrases = [p.paraphrase for p in ctx.pairs]
    exact = _bodies(originals, CHECK_SCOPE)
    exact_c1 = await http(f"{who}: exact c=1", url, _cycle(exact, plan.exact_c1), 1)
    exact_c16 = await http(f"{who}: exact c=16", url, _cycle(exact, plan.exact_c16), C16)
    _record(sample, prefix + "exact", exact_c1, exact_c16)
    first_c1 = first_c16 = Run([], 0.0)
    for j in range(plan.first_scopes):
        scope = base + 10 * rep + j
        say(f"  rep {rep}: {who}: warming scope max_tokens={scope} with {len(originals)} questions")
        await warm(url, originals, scope, ctx.notes)
        asked = _bodies(paraphrases, scope)
        if j == 0:
            first_c1 = await http(f"{who}: first-time semantic c=1", url, asked[: plan.first_c1], 1)
            asked = asked[plan.first_c1 :]
        more = await http(f"{who}: first-time semantic c=16", url, asked, C16)
        first_c16 = Run(first_c16.shots + more.shots, first_c16.wall + more.wall)
    _record(sample, prefix + "first", first_c1, first_c16)
    asked = _bodies(paraphrases, scope)
    repeat_c1 = await http(f"{who}: repeated semantic c=1", url, _cycle(asked, plan.repeat_c1), 1)
    repeat_c16 = await http(
        f"{who}: repeated semantic c=16", url, _cycle(asked, plan.repeat_c16), C16
    )
    _record(sample, prefix + "repeat", repeat_c1, repeat_c16)
    ctx.hit_counts.append(
        f"rep {rep}, {who}: other outcomes — exact phases "
        f"{_others('HIT-EXACT', exact_c1, exact_c16)}; first-time paraphrases "
        f"{_others('HIT-SEMANTIC', first_c1, first_c16)}; repeated "
        f"{_others('HIT-SEMANTIC', repeat_c1, repeat_c16)}"
    )


def _others(kind: str, *runs: Run) -> str:
    tally: dict[str, int] = {}
    for run in runs:
        for name, n in run.others(kind).items():
            tally[name] = tally.get(name, 0) + n
    return ", ".join(f"{k} {v}" for k, v in tally.items()) or "none"


def _git_head() -> str:
    try:
        out = subprocess.run(
            ["git", "log", "-1", "--format=%h %s"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        return out.stdout.strip()[:100] or "unknown"
    except OSError:
        return "unknown"


async def amain(args: argparse.Namespace) -> int:
    """Start everything, run the repetitions, write the report."""
    plan = QUICK if args.quick else FULL
    output = Path(args.output) if args.output else HERE / "throughput.md"
    command = "python -m bench.throughput" + "".join(f" {a}" for a in sys.argv[1:])
    started = time.monotonic()
    machine = machine_table(command)
    busy = os.getloadavg()[0]
    machine.add("code", f"`{_git_head()}`")
    settings = load_settings({})
    # The comparison Sentinel: one worker per core, or one worker where that is the default.
    cores = min(os.cpu_count() or 1, MAX_WORKERS)
    other_workers = str(cores if worker_count() != cores else 1)
    say("loading the local embedder (the service's model and settings)")
    embedder = await LocalEmbedder.load(model=settings.local_embedding_model)
    redisvl: RedisvlCache | None = None
    try:
        guard, floor = configured_decision(settings, embedder.id)
        candidates, source = candidate_pairs()
        pairs = await choose_pairs(
            embedder, candidates, want=plan.pairs, threshold=floor, guard=guard, seed=args.seed
        )
        say(f"{len(pairs)} question/paraphrase pairs ({source})")
        async with (
            bench_redis("throughput") as server,
            fake_provider(plan.delay) as provider,
            serve_trivial() as trivial_url,
            serve_sentinel(server.url, provider, verifier=args.verifier) as info,
            serve_sentinel(
                server.url, provider, workers=other_workers, verifier=args.verifier
            ) as other,
        ):
            machine.add("servers", await server_versions(server.url))
            redis = await connect_redis(server.url)
            store = CacheStore(
                redis,
                embedder_id=embedder.id,
                dimension=embedder.dimension,
                ef_runtime=settings.knn_ef_runtime,
            )
            ctx = Context(
                plan,
                pairs,
                trivial_url,
                info,
                other,
                embedder,
                redis,
                store,
                "",
                floor,
                settings.knn_top_k,
                None,
            )
            try:
                say("checking which paraphrases Sentinel serves semantically")
                ctx.pairs = await check_paraphrases(ctx, pairs)
                # Every worker of both Sentinels has its exact bodies' plans remembered before
                # the first measurement (untimed; the check asked them on one connection).
                exact = _bodies([p.original for p in ctx.pairs], CHECK_SCOPE)
                for served in (info, other):
                    await load(served.url, exact * 2, C16)
                if args.redisvl:
                    try:
                        redisvl = RedisvlCache(server.url, embedder, floor)
                        await redisvl.fill([p.original for p in ctx.pairs], embedder)
                        ctx.redisvl = redisvl
                    except Exception as exc:
                        ctx.notes.append(f"redisvl SemanticCache skipped: {exc!r}"[:300])
                for rep in range(1, plan.reps + 1):
                    say(f"repetition {rep} of {plan.reps}")
                    await repetition(ctx, rep)
                workers, workers_other = info.workers(), other.workers()
            finally:
                if redisvl is not None:
                    await redisvl.aclose()
                await redis.aclose()
    finally:
        await embedder.aclose()
    elapsed = time.monotonic() - started
    machine.add("load average at end (1/5/15 min)", " / ".join(f"{x:.2f}" for x in os.getloadavg()))
    machine.add("total runtime", f"{elapsed / 60:.1f} min")
    setup = Table("How each system was run", ["item", "value"])
    setup.add(
        "Sentinel",
        "`python -m app` (what `make run` runs), default settings, REDIS_URL = the bench Redis",
    )
    setup.add(
        "WEB_CONCURRENCY given to Sentinel",
        f"{info.web_concurrency} (`make run`'s default: one worker per two cores, "
        f"{worker_count({})} here)"
        if info.web_concurrency == "unset"
        else info.web_concurrency,
    )
    setup.add("Sentinel worker processes seen after the run", workers)
    setup.add(
        "comparison Sentinel (second process, same Redis)",
        f"WEB_CONCURRENCY={other_workers}; worker processes seen after the run: "
        f"{workers_other}; its semantic "
        f"scopes are max_tokens +{OTHER_SCOPES} from the default Sentinel's",
    )
    setup.add("server stack (Sentinel and floor)", server_stack())
    setup.add("embedder", f"{embedder.id} ({settings_line(settings)}, cosine floor {floor})")
    setup.add("guard", "off" if guard is None else f"on, p ≥ {guard.threshold}")
    setup.add("VERIFIER (Sentinel)", args.verifier or f"unset (default: {settings.verifier})")
    setup.add("fake provider delay", f"{plan.delay:g} s (misses only)")
    setup.add("questions", f"{len(ctx.pairs)} verified pairs of {len(pairs)} chosen; {source}")
    setup.add("repetitions", f"{plan.reps}, interleaved (every system in each repetition)")
    if busy > 0.5 * (os.cpu_count() or 1):
        ctx.notes.insert(
            0,
            f"**the machine was busy before this run started** (1-min load {busy:.2f} on "
            f"{os.cpu_count()} cores): other work shared the cores; read the spread",
        )
    write_report(
        output,
        quick=args.quick,
        machine=machine,
        setup=setup,
        systems={
            k: v.format(workers=plural(workers), other=other_workers) for k, v in SYSTEMS.items()
        },
        ratios=RATIOS,
        workers=workers,
        other=int(other_workers),
        samples=ctx.samples,
        notes=ctx.notes + ctx.hit_counts,
        plan=plan.__dict__,
    )
    say(f"wrote {output} in {elapsed / 60:.1f} min")
    return 0


def main() -> None:
    """Parse arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer requests (under 2 minutes)")
    parser.add_argument("--no-redisvl", dest="redisvl", action="store_false")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--output", default="", help="report path (default bench/throughput.md)")
    parser.add_argument(
        "--verifier",
        choices=["on", "overlap", "checks", "off"],
        help="VERIFIER for Sentinel (default: the service's; the reference never verifies)",
    )
    sys.exit(asyncio.run(amain(parser.parse_args())))


if __name__ == "__main__":
    main()
