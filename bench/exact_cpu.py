"""`python -m bench.exact_hits --cpu N`: CPU time per exact hit, in process, with no socket.

The real app (create_app, its lifespan, a fresh Redis Stack, the fake provider for the one
miss that stores the question) driven as an ASGI callable: a fixed request scope, a receive
that hands the body once, a send that keeps the response. N exact hits on each endpoint, one
at a time or `concurrency` at once, and the CPU time this process spent on them
(time.process_time) divided by N: the server's own cost of a hit, HTTP parsing aside, and
far steadier than a wall-clock rate on a shared machine (the other core's load does not
count). Logging goes where the server's would, as JSON lines, to a file under var/bench.
With `profile`, the last endpoint's loop also runs under cProfile and the stats go there.
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import logging
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from litestar import Litestar

from bench.procs import BENCH_VAR

Send = Callable[[dict[str, Any]], Awaitable[None]]


def request_scope(path: str, body: bytes) -> dict[str, Any]:
    """What uvicorn hands the app for a JSON POST with aiohttp's headers."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
        "scheme": "http",
        "root_path": "",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"accept", b"*/*"),
            (b"accept-encoding", b"gzip, deflate"),
            (b"user-agent", b"Python/3.11 aiohttp/3.9"),
            (b"content-length", str(len(body)).encode()),
            (b"content-type", b"application/json"),
        ],
        "state": {},
    }


async def call(app: Litestar, path: str, body: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    """One request through the ASGI app: (status, headers, body)."""
    sent: list[dict[str, Any]] = []
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if delivered:
            await asyncio.sleep(3600)  # a disconnect would come only when the client left
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(request_scope(path, body), receive, send)  # type: ignore[arg-type]
    start = sent[0]
    payload = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], dict(start["headers"]), payload


async def hits(app: Litestar, path: str, body: bytes, n: int, concurrency: int) -> float:
    """CPU µs per request over n exact hits, `concurrency` in flight."""
    remaining = iter(range(n))

    async def worker() -> None:
        for _ in remaining:
            status, headers, _payload = await call(app, path, body)
            if status != 200 or headers.get(b"x-sentinel-cache") != b"HIT-EXACT":
                raise RuntimeError(f"{path}: {status} {headers.get(b'x-sentinel-cache')!r}")

    started = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return (time.process_time() - started) / n * 1e6


async def measure(
    targets: dict[str, tuple[str, dict[str, Any]]],
    *,
    redis_url: str,
    provider_url: str,
    n: int,
    runs: int,
    concurrency: int,
    profile: str | None = None,
) -> dict[str, list[float]]:
    """CPU µs per exact hit on each target (name: (path, JSON body)), `runs` loops of n."""
    os.environ.update(
        REDIS_URL=redis_url,
        GROQ_API_KEY="bench",
        GROQ_BASE_URL=provider_url,
        VERIFY_SAMPLE_RATE="0",
        LOG_LEVEL="INFO",
    )
    from app.logging import configure_logging  # noqa: PLC0415 (after the environment is set)
    from app.main import create_app  # noqa: PLC0415
    from app.settings import load_settings  # noqa: PLC0415

    settings = load_settings()
    BENCH_VAR.mkdir(parents=True, exist_ok=True)
    log_file = (BENCH_VAR / "exact-cpu.log").open("w")
    stderr, sys.stderr = sys.stderr, log_file
    try:
        configure_logging(settings.log_level)
    finally:
        sys.stderr = stderr
    app = create_app(settings)
    results: dict[str, list[float]] = {}
    async with app.lifespan():
        for path, body in targets.values():
            status, _, payload = await call(app, path, msgspec.json.encode(body))
            assert status == 200, (status, payload)
        # What start-up left behind moves out of the collector's sight: a full collection
        # walks every object, and whether one falls inside a measured loop is chance.
        gc.collect()
        gc.freeze()
        for name, (path, body) in targets.items():
            raw = msgspec.json.encode(body)
            await hits(app, path, raw, max(200, n // 10), concurrency)  # warm up
            for _ in range(runs):
                results.setdefault(name, []).append(await hits(app, path, raw, n, concurrency))
        if profile:
            name, (path, body) = next(iter(targets.items()))
            profiler = cProfile.Profile()
            profiler.enable()
            await hits(app, path, msgspec.json.encode(body), n, concurrency)
            profiler.disable()
            profiler.dump_stats(profile)
    logging.getLogger().handlers[:] = []
    log_file.close()
    return results


def report(results: dict[str, list[float]], concurrency: int) -> None:
    """The medians, as a table."""
    print(f"\n| endpoint (in process, c={concurrency}) | CPU µs per exact hit, median | runs |")
    print("|---|---|---|")
    for name, values in results.items():
        shown = ", ".join(f"{v:.0f}" for v in values)
        print(f"| {name} | {statistics.median(values):.0f} | {shown} |")
