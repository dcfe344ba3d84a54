"""Serving under uvicorn: one process, or WEB_CONCURRENCY worker processes sharing one Redis.

With several workers the parent process owns what they must share: the embedded Redis Stack
(started once, before them, when REDIS_URL is unset; each worker's lifespan finds it on its
port and data dir and attaches instead of starting its own; the parent stops it after the
last worker has drained) and PROMETHEUS_MULTIPROC_DIR (a fresh directory unless the operator
set one), so GET /metrics on any worker adds every worker's counts up. Coalescing
(app/cache/flight.py) and the /v1/metrics counters already go through Redis.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import uvicorn
from litestar import Litestar
from uvicorn.supervisors import Multiprocess

from app.embedded_redis import EmbeddedRedis
from app.logging import configure_logging
from app.main import create_app
from app.settings import Settings, SettingsError, load_settings

# Idle keep-alive connections close after 30 s (above the 15 s probe interval of most
# proxies), and a stop waits up to 20 s for requests in flight, below the 30 s that
# docker-compose.yml and fly.toml give before SIGKILL.
KEEP_ALIVE_SECONDS = 30
GRACEFUL_SHUTDOWN_SECONDS = 20
MAX_WORKERS = 64
# As the lifespan's: an embedded Redis replays its AOF and rebuilds HNSW graphs first.
EMBEDDED_START_TIMEOUT = 300.0
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"


def worker_count(environ: dict[str, str] | None = None) -> int:
    """WEB_CONCURRENCY (uvicorn's convention); unset: one worker per two cores.

    A worker is more than its event loop: its embedder and verifier run ONNX on two threads
    each, and Redis (embedded by `make run`, or the sidecar) shares the host. On this 2-core
    machine, two bench.throughput runs of one worker beside two (Dec 3, after auto-pipelining):
    exact hits/s 0.53 and 0.48 of the floor's against 0.39 and 0.47; semantic p50 1.37x and
    1.55x the in-process reference's against 1.68x and 1.48x; semantic hits/s 0.60 and 0.57
    against 0.61 and 0.58. One worker was never behind by more than noise, and once ahead by
    a quarter on exact hits. Two workers do not even split a client's load: the shared socket
    hands keep-alive connections to whichever worker accepts first (16 of 16 on one, then 13
    and 3, in three 16-connection runs).
    """
    raw = (os.environ if environ is None else environ).get("WEB_CONCURRENCY", "").strip()
    if not raw:
        return max(1, min((os.cpu_count() or 1) // 2, MAX_WORKERS))
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_WORKERS:
        raise SettingsError(
            f"WEB_CONCURRENCY: expected a whole number from 1 to {MAX_WORKERS}, got {raw!r}"
        )
    return int(raw)


def create_worker_app() -> Litestar:
    """ASGI factory, called in every worker: JSON logging there too, then Sentinel's app."""
    settings = load_settings()
    configure_logging(settings.log_level)
    return create_app(settings)


def serve(settings: Settings, workers: int) -> None:
    """Serve until stopped (SIGTERM, SIGINT); `workers` > 1 runs worker processes."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,  # app/logging.py configures JSON lines in every process
        "access_log": False,  # the request log middleware writes one line per request
        "lifespan": "on",
        # uvloop and httptools when installed, asyncio and h11 otherwise.
        "loop": "auto",
        "http": "auto",
        "timeout_keep_alive": KEEP_ALIVE_SECONDS,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_SECONDS,
        "server_header": False,
    }
    if workers == 1:
        uvicorn.run(create_app(settings), **options)
        return
    config = uvicorn.Config(
        "app.serving:create_worker_app", factory=True, workers=workers, **options
    )
    with shared_by_workers(settings):
        # What uvicorn.run does for workers, plus TCP_NODELAY: uvicorn's own socket (protocol
        # 0) makes asyncio skip it on accepted connections, so a response's head and body
        # wait out the client's delayed ACK (44 ms per request measured here). Linux hands
        # the option on from the listening socket to the connections it accepts.
        sock = config.bind_socket()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            Multiprocess(config, sockets=[sock]).run()
        finally:
            sock.close()


@contextmanager
def shared_by_workers(settings: Settings) -> Iterator[None]:
    """The embedded Redis (when REDIS_URL is unset) and the Prometheus directory, for the
    workers' lifetime; released after the last one exits."""
    with ExitStack() as stack:
        if not settings.redis_url:
            embedded = EmbeddedRedis(
                port=settings.embedded_redis_port, data_dir=settings.embedded_redis_dir
            )
            embedded.start_sync(timeout=EMBEDDED_START_TIMEOUT)
            stack.callback(embedded.stop_sync)
        if not os.environ.get(MULTIPROC_DIR):
            # Workers inherit the environment: every one writes its counters here.
            directory = tempfile.mkdtemp(prefix="sentinel-prometheus-")
            stack.callback(shutil.rmtree, directory, ignore_errors=True)
            stack.callback(os.environ.pop, MULTIPROC_DIR, None)
            os.environ[MULTIPROC_DIR] = directory
        yield
