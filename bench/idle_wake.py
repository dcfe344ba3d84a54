"""`python -m bench.idle_wake`: what an HTTP round trip costs when the server idles first.

    python -m bench.idle_wake [--requests 300] [--rounds 2] [--output bench/idle-wake.md]

A raw ASGI app on uvicorn (Sentinel's loop and parser: uvloop, httptools) waits N ms
(`asyncio.sleep`) and then answers; an aiohttp client sends sequential requests (c=1) over one
keep-alive connection, as bench/throughput.py's c=1 phases do. Beside each, the same wait in
the client's own process (no HTTP). HTTP overhead = p50 over HTTP minus p50 in process.

Why: a first-time semantic hit keeps Sentinel busy for ~5-6 ms (most of it an ONNX run on
other threads) while the client and the server's event loop sleep; the in-process reference
of issue 15 has no HTTP hop to wake. If the hop costs more after a longer idle, part of the
c=1 semantic ratio is the machine's, not the service's: this measures how much.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import aiohttp
import uvicorn

from bench.procs import HOST, Child, free_port, wait_tcp
from bench.stats import Table

HERE = Path(__file__).parent
IDLES_MS = (0, 1, 3, 5, 7)

Message = MutableMapping[str, Any]


async def app(
    scope: MutableMapping[str, Any],
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    """Wait the milliseconds the path names (`/5`), then answer `ok`."""
    if scope["type"] != "http":
        return
    await receive()
    idle = int(scope["path"].strip("/") or 0)
    if idle:
        await asyncio.sleep(idle / 1000)
    headers = [(b"content-length", b"2")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})


def serve(port: int) -> None:
    """The app on uvicorn with Sentinel's loop and parser."""
    uvicorn.run(app, host=HOST, port=port, log_config=None, access_log=False, lifespan="off")


async def p50_http(session: aiohttp.ClientSession, url: str, n: int) -> float:
    """p50 ms of `n` sequential GETs."""
    times = []
    for _ in range(n):
        started = time.perf_counter()
        async with session.get(url) as response:
            await response.read()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def p50_local(idle_ms: int, n: int) -> float:
    """p50 ms of `n` sequential in-process waits of `idle_ms`."""
    times = []
    for _ in range(n):
        started = time.perf_counter()
        await asyncio.sleep(idle_ms / 1000)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def amain(args: argparse.Namespace) -> None:
    """Start the server, measure every idle in every round, write the table."""
    port = free_port()
    argv = [sys.executable, "-m", "bench.idle_wake", "--serve", str(port)]
    child = Child("idle-wake", argv, dict(os.environ))
    rows: dict[int, list[tuple[float, float]]] = {idle: [] for idle in IDLES_MS}
    try:
        await wait_tcp(child, port, budget=30.0)
        async with aiohttp.ClientSession() as session:
            await p50_http(session, f"http://{HOST}:{port}/0", 20)  # warm the connection
            for _ in range(args.rounds):
                for idle in IDLES_MS:
                    http = await p50_http(session, f"http://{HOST}:{port}/{idle}", args.requests)
                    rows[idle].append((http, await p50_local(idle, args.requests)))
    finally:
        child.stop()
    table = Table(
        "HTTP round trip after the server idles (c=1, medians of the rounds' p50s)",
        ["server idles", "p50 over HTTP", "p50 in process", "HTTP overhead", "per round"],
    )
    for idle, pairs in rows.items():
        http = statistics.median(h for h, _ in pairs)
        local = statistics.median(w for _, w in pairs)
        rounds = ", ".join(f"{h - w:.2f}" for h, w in pairs)
        table.add(
            f"{idle} ms", f"{http:.3f} ms", f"{local:.3f} ms", f"{http - local:.3f} ms", rounds
        )
    table.notes.append(
        f"{args.rounds} rounds of {args.requests} requests per idle, interleaved; "
        f"`python -m bench.idle_wake`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    text = "# " + (__doc__ or "").splitlines()[0].split(": ", 1)[1] + "\n\n" + table.markdown()
    print(text)
    await asyncio.to_thread(Path(args.output).write_text, text, encoding="utf-8")


def main() -> None:
    """Parse arguments; `--serve PORT` is the server side."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output", default=str(HERE / "idle-wake.md"))
    parser.add_argument("--serve", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
