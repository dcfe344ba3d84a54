"""`python -m bench.exact_hits`: exact hits over HTTP against a trivial server, same sitting.

    python -m bench.exact_hits [--runs 3] [--workers 1,2] [--steps] [--profile PATH]

A fresh Redis Stack, the fake provider in its own process, the trivial ASGI server of
bench/throughput.py (bench/trivial_server.py: uvicorn, one
worker, a fixed JSON body: the floor of any Python HTTP service here) and Sentinel with each
WEB_CONCURRENCY given. One question is stored, then each run measures, on every server: p50 of
sequential requests (c=1) and requests/s with 16 in flight (c=16), over keep-alive
connections; Sentinel on both `/v1/chat/completions` and `/v1/query`. Prints medians of the
runs and the ratios to the trivial server. `--steps` adds the steps between the two
(bench/trivial_server.py `--app litestar` and `litestar-redis`): how much of Sentinel's cost is
the framework and one Redis round trip, which no application code can remove. With
`--profile`, Sentinel (one worker) also runs under cProfile for one c=16 phase per endpoint
(bench/profiled_app.py) and the stats go there. With `--cpu N`, no HTTP at all: CPU µs per
exact hit with the app driven in this process (bench/exact_cpu.py; `--concurrency`, and
`--profile` for that loop's cProfile stats).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from bench.procs import HOST, Child, _wait_healthy, bench_redis, fake_provider, free_port
from bench.tput_http import serve_trivial

QUESTION = "What is the capital of France?"
CHAT = {"model": "groq/llama-3.1-8b-instant", "messages": [{"role": "user", "content": QUESTION}]}
QUERY = {"prompt": QUESTION}


@asynccontextmanager
async def sentinel_server(
    redis_url: str,
    provider_url: str,
    workers: int,
    profile: str | None = None,
    checkout: str | None = None,
) -> AsyncIterator[tuple[str, Child]]:
    """Sentinel with WEB_CONCURRENCY=workers (under cProfile when `profile`; the code of
    another checkout, e.g. a worktree of an older commit, when `checkout`)."""
    port = free_port()
    env = dict(os.environ)
    env.update(
        REDIS_URL=redis_url,
        GROQ_API_KEY="bench",
        GROQ_BASE_URL=provider_url,
        HOST=HOST,
        PORT=str(port),
        WEB_CONCURRENCY=str(workers),
        VERIFY_SAMPLE_RATE="0",
        LOG_LEVEL="INFO",
    )
    module = "app"
    if profile:
        env["SENTINEL_PROFILE_OUT"] = profile
        module = "bench.profiled_app"
    argv = [sys.executable, "-m", module]
    if checkout:
        run = f"import runpy, sys; sys.path.insert(0, {checkout!r}); "
        run += "runpy.run_module('app', run_name='__main__')"
        argv = [sys.executable, "-c", run]
    child = Child(f"sentinel-w{workers}", argv, env)
    base_url = f"http://{HOST}:{port}"
    try:
        await _wait_healthy(child, base_url, budget=120.0)
        yield base_url, child
    finally:
        child.stop()


Call = Callable[[aiohttp.ClientSession], Awaitable[None]]


def caller(url: str, body: dict[str, Any] | None) -> Call:
    """One request; fails on any status but 200 (and on anything but an exact hit)."""

    async def call(session: aiohttp.ClientSession) -> None:
        async with session.post(url, json=body or {}) as response:
            await response.read()
            if response.status != 200:
                raise RuntimeError(f"{url}: {response.status}")
            if body is not None and response.headers.get("X-Sentinel-Cache") != "HIT-EXACT":
                raise RuntimeError(f"{url}: not an exact hit")

    return call


async def p50_ms(call: Call, seconds: float) -> float:
    """Median latency of sequential requests for `seconds`."""
    async with aiohttp.ClientSession() as session:
        for _ in range(50):
            await call(session)
        samples: list[float] = []
        end = time.perf_counter() + seconds
        while (now := time.perf_counter()) < end:
            await call(session)
            samples.append(time.perf_counter() - now)
    return statistics.median(samples) * 1000


async def per_second(call: Call, seconds: float, concurrency: int = 16) -> float:
    """Requests per second with `concurrency` in flight for `seconds`."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(call(session) for _ in range(concurrency * 4)))
        done = 0
        end = time.perf_counter() + seconds

        async def loop() -> None:
            nonlocal done
            while time.perf_counter() < end:
                await call(session)
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        return done / (time.perf_counter() - started)


async def measure(call: Call, seconds: float) -> tuple[float, float]:
    """(p50 ms at c=1, requests/s at c=16)."""
    return await p50_ms(call, seconds), await per_second(call, seconds)


async def prime(base_url: str) -> None:
    """Store the question (a miss), so every later call is an exact hit."""
    async with aiohttp.ClientSession() as session:
        for path, body in (("/v1/chat/completions", CHAT), ("/v1/query", QUERY)):
            async with session.post(base_url + path, json=body) as response:
                await response.read()
                assert response.status == 200, response.status


async def profile_phase(base_url: str, child: Child, seconds: float) -> None:
    """One c=16 phase per endpoint with the profiler on."""
    child.process.send_signal(signal.SIGUSR1)
    for path, body in (("/v1/chat/completions", CHAT), ("/v1/query", QUERY)):
        rate = await per_second(caller(base_url + path, body), seconds)
        print(f"  profiled {path}: {rate:.0f}/s (slowed by cProfile)")
    child.process.send_signal(signal.SIGUSR2)


async def spy_main(args: argparse.Namespace) -> None:
    """py-spy's flame summary of one worker serving exact hits at c=16 (chat completions)."""
    from bench.profile_semantic import flame_summary, spy  # noqa: PLC0415

    out = Path(tempfile.mkdtemp()) / "exact.raw"
    async with (
        bench_redis("exact-spy") as redis,
        fake_provider(0.05) as provider_url,
        sentinel_server(redis.url, provider_url, 1) as (url, child),
    ):
        await prime(url)
        call = caller(url + "/v1/chat/completions", CHAT)
        await per_second(call, 1.0)  # warm
        recorder = spy(child.process.pid, out, args.py_spy, native=False)
        rate = await per_second(call, args.py_spy + 1.0)
        await asyncio.to_thread(recorder.wait)
    print(f"exact hits at c=16 while recorded: {rate:.0f}/s")
    print(flame_summary(out, thread=None, top=args.top))


async def cpu_main(args: argparse.Namespace) -> None:
    """CPU µs per exact hit in process (bench/exact_cpu.py)."""
    from bench import exact_cpu  # noqa: PLC0415

    targets: dict[str, tuple[str, dict[str, Any]]] = {
        "/v1/chat/completions": ("/v1/chat/completions", CHAT),
        "/v1/query": ("/v1/query", QUERY),
    }
    async with bench_redis("exact-cpu") as redis, fake_provider(0.0) as provider_url:
        results = await exact_cpu.measure(
            targets,
            redis_url=redis.url,
            provider_url=provider_url,
            n=args.cpu,
            runs=args.runs,
            concurrency=args.concurrency,
            profile=args.profile,
        )
    exact_cpu.report(results, args.concurrency)


async def main(args: argparse.Namespace) -> None:
    """Measure, print the medians and ratios."""
    if args.cpu:
        await cpu_main(args)
        return
    if args.py_spy:
        await spy_main(args)
        return
    workers = [int(w) for w in args.workers.split(",")]
    results: dict[str, list[tuple[float, float]]] = {}
    async with bench_redis("exact-hits") as redis, fake_provider(0.05) as provider_url:
        if args.profile:
            async with sentinel_server(redis.url, provider_url, 1, args.profile) as (url, child):
                await prime(url)
                await profile_phase(url, child, args.seconds)
            print(f"profile written to {args.profile}")
        async with AsyncExitStack() as steps:
            trivial_url = await steps.enter_async_context(serve_trivial())
            step_urls = {}
            if args.steps:
                for app in ("litestar", "litestar-redis"):
                    server = serve_trivial(app, redis.url if app == "litestar-redis" else None)
                    step_urls[app] = await steps.enter_async_context(server)
            configs = [(f"w{count}", count, None) for count in workers]
            if args.before:
                configs.insert(0, ("before", 1, args.before))
            for label, count, checkout in configs:
                async with sentinel_server(redis.url, provider_url, count, checkout=checkout) as (
                    url,
                    _,
                ):
                    await prime(url)
                    targets = {
                        "trivial": caller(trivial_url, None),
                        **{name: caller(step, None) for name, step in step_urls.items()},
                        f"chat {label}": caller(url + "/v1/chat/completions", CHAT),
                        f"query {label}": caller(url + "/v1/query", QUERY),
                    }
                    for run in range(args.runs):
                        for name, call in targets.items():
                            outcome = await measure(call, args.seconds)
                            results.setdefault(name, []).append(outcome)
                            print(f"run {run + 1} {name}: p50 {outcome[0]:.2f} ms, "
                                  f"{outcome[1]:.0f}/s", flush=True)  # fmt: skip
    floor_p50 = statistics.median(p for p, _ in results["trivial"])
    floor_rate = statistics.median(r for _, r in results["trivial"])
    print("\n| server | p50 c=1 | req/s c=16 | p50 / trivial | req/s / trivial |")
    print("|---|---|---|---|---|")
    for name, outcomes in results.items():
        p50 = statistics.median(p for p, _ in outcomes)
        rate = statistics.median(r for _, r in outcomes)
        print(f"| {name} | {p50:.2f} ms | {rate:.0f} | {p50 / floor_p50:.2f} | "
              f"{rate / floor_rate:.2f} |")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--workers", default="1")
    parser.add_argument("--profile", default=None)
    parser.add_argument("--before", default=None, help="a checkout to measure first (1 worker)")
    parser.add_argument(
        "--steps",
        action="store_true",
        help="also measure a one-route Litestar app, and the same plus one Redis HMGET",
    )
    parser.add_argument(
        "--cpu", type=int, default=0, help="N: CPU µs per exact hit in process, N hits a run"
    )
    parser.add_argument("--concurrency", type=int, default=1, help="with --cpu: hits in flight")
    parser.add_argument(
        "--py-spy", type=int, default=0, help="N: instead, a py-spy flame summary over N seconds"
    )
    parser.add_argument("--top", type=int, default=25, help="frames in the flame summary")
    asyncio.run(main(parser.parse_args()))
