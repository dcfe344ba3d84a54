"""bench/throughput.py's HTTP side: the servers it starts and the aiohttp load generator."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import msgspec

from bench.procs import HOST, Child, free_port, sentinel, wait_tcp
from bench.stats import Summary

REQUEST_TIMEOUT = 30.0
CHAT_PATH = "/v1/chat/completions"
_ENCODER = msgspec.json.Encoder()


@dataclass(frozen=True)
class Shot:
    """One POST as the client saw it: time to the last body byte, status, X-Sentinel-Cache."""

    latency_ms: float
    status: int
    cache: str
    entry: str


@dataclass(frozen=True)
class Run:
    """The replies of one measurement and its wall time (first request sent to last read)."""

    shots: list[Shot]
    wall: float

    def rate_of(self, cache: str | None) -> float:
        """`rate`, under the name OpRun shares."""
        return self.rate(cache)

    def latency_of(self, cache: str | None) -> Summary:
        """`latency`, under the name OpRun shares."""
        return self.latency(cache)

    def count(self, cache: str | None) -> int:
        """Replies with that X-Sentinel-Cache value (None: every 200)."""
        return sum(1 for s in self.shots if s.status == 200 and cache in (None, s.cache))

    def rate(self, cache: str | None) -> float:
        """Replies of that kind per second of wall time."""
        n = self.count(cache)
        return n / self.wall if self.wall > 0 and n else float("nan")

    def latency(self, cache: str | None) -> Summary:
        """Latency of the replies of that kind."""
        return Summary.of(
            [s.latency_ms for s in self.shots if s.status == 200 and cache in (None, s.cache)]
        )

    def others(self, cache: str | None) -> dict[str, int]:
        """Replies of any other kind, by X-Sentinel-Cache (or HTTP status)."""
        tally: dict[str, int] = {}
        for s in self.shots:
            if s.status == 200 and cache in (None, s.cache):
                continue
            name = s.cache if s.status == 200 else f"HTTP {s.status}"
            tally[name] = tally.get(name, 0) + 1
        return tally


def chat_body(question: str, max_tokens: int) -> bytes:
    """A drop-in Chat Completions request; `max_tokens` is part of the cache scope, so each
    value is a fresh cache for the same questions."""
    return _ENCODER.encode(
        {
            "model": "llama-3.1-8b-instant",
            "messages": [{"role": "user", "content": question}],
            "max_tokens": max_tokens,
        }
    )


def _session(concurrency: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency),
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
    )


async def _post(session: aiohttp.ClientSession, url: str, body: bytes) -> Shot:
    started = time.perf_counter()
    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
        await r.read()
        status = r.status
        cache = r.headers.get("X-Sentinel-Cache", "")
        entry = r.headers.get("X-Sentinel-Entry", "")
    return Shot((time.perf_counter() - started) * 1000, status, cache, entry)


async def load(
    url: str, bodies: Sequence[bytes], concurrency: int, probe: bytes | None = None
) -> Run:
    """`concurrency` clients on keep-alive connections, each sending the next body as soon as
    its previous reply is read, until every body is sent (concurrency 1: one at a time).

    With `probe`, each connection first sends it untimed (connection set-up is not what is
    measured); it must not be one of `bodies` when their first asking matters.
    """
    shots: list[Shot] = []
    queue = iter(bodies)
    async with _session(concurrency) as session:
        if probe is not None:
            await asyncio.gather(*(_post(session, url, probe) for _ in range(concurrency)))

        async def client() -> None:
            for body in queue:
                shots.append(await _post(session, url, body))

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return Run(shots, wall)


def server_stack() -> str:
    """What uvicorn's "auto" picks in this venv (the same for Sentinel and the floor)."""
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return f"uvicorn loop={loop}, http={http}"


def child_workers(pid: int) -> int:
    """uvicorn worker processes under `pid` (spawned children), 1 when it serves alone."""
    workers = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and b"spawn_main" in cmdline:
            workers += 1
    return workers or 1


@dataclass
class SentinelInfo:
    """How a Sentinel under test was served."""

    url: str = ""
    web_concurrency: str = "unset"
    pid: int = 0

    def workers(self) -> int:
        """Worker processes serving right now."""
        return child_workers(self.pid) if self.pid else 0


@asynccontextmanager
async def serve_sentinel(
    redis_url: str, provider_url: str, *, workers: str | None = None, verifier: str | None = None
) -> AsyncIterator[SentinelInfo]:
    """`python -m app` on the bench Redis, default settings. As `make run` serves it: this
    process's WEB_CONCURRENCY passed through when set, else none (app/serving.py's default,
    one worker per two cores); with `workers`, that WEB_CONCURRENCY. `verifier`: VERIFIER
    (unset: the service's default)."""
    info = SentinelInfo()
    if workers is not None:
        info.web_concurrency = workers
    elif "WEB_CONCURRENCY" in os.environ:
        info.web_concurrency = os.environ["WEB_CONCURRENCY"]

    def started(child: Child) -> None:
        info.pid = child.process.pid

    async with sentinel(
        "sentinel-throughput" if workers is None else f"sentinel-throughput-{workers}w",
        redis_url=redis_url,
        provider_url=provider_url,
        started=started,
        workers=workers,
        extra=None if verifier is None else {"VERIFIER": verifier},
    ) as url:
        info.url = url + CHAT_PATH
        yield info


@asynccontextmanager
async def serve_trivial(app: str = "raw", redis_url: str | None = None) -> AsyncIterator[str]:
    """bench/trivial_server.py (`app`: raw, litestar, litestar-redis) in its own process;
    yields the URL to POST to."""
    port = free_port()
    argv = [sys.executable, "-m", "bench.trivial_server", "--port", str(port), "--app", app]
    if redis_url is not None:
        argv += ["--redis", redis_url]
    # One worker whatever WEB_CONCURRENCY says (uvicorn reads it too): the floor is one process.
    env = {k: v for k, v in os.environ.items() if k != "WEB_CONCURRENCY"}
    child = Child("trivial-server", argv, env)
    try:
        await wait_tcp(child, port, budget=30.0)
        yield f"http://{HOST}:{port}{CHAT_PATH}"
    finally:
        child.stop()
