"""The processes a benchmark runs: a bench Redis Stack, the fake provider, Sentinel itself."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import msgspec

from app.embedded_redis import EmbeddedRedis
from app.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
BENCH_VAR = ROOT / "var" / "bench"
HOST = "127.0.0.1"

# Every environment variable Sentinel reads: the bench sets them explicitly, never inherits.
_SETTING_NAMES = {f.encode_name for f in msgspec.structs.fields(Settings)}


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def bench_redis(name: str, *, appendonly: bool = False) -> AsyncIterator[EmbeddedRedis]:
    """A fresh embedded Redis Stack under var/bench/NAME, stopped on exit; with `appendonly`
    its AOF is on, so a restart finds the data again."""
    data_dir = BENCH_VAR / name
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    server = EmbeddedRedis(port=free_port(), data_dir=data_dir, appendonly=appendonly)
    await server.start(timeout=30.0)
    try:
        yield server
    finally:
        await server.stop(timeout=30.0)


class Child:
    """A child process whose output goes to a log file; SIGTERM, then SIGKILL, on stop."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], cwd: Path = ROOT) -> None:
        BENCH_VAR.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log_path = BENCH_VAR / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def check_alive(self) -> None:
        """Raise with the log's tail if the process has exited."""
        if self.process.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with code {self.process.returncode}:\n{self.tail()}"
            )

    def tail(self, lines: int = 30) -> str:
        """The last lines of the process's output."""
        self._log.flush()
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, wait up to `timeout`, then SIGKILL."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()


async def wait_tcp(child: Child, port: int, budget: float) -> None:
    """Wait up to `budget` seconds until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        child.check_alive()
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 1.0)
        except (OSError, TimeoutError):
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise RuntimeError(f"{child.name} did not listen on port {port} within {budget:g} s")


@asynccontextmanager
async def fake_provider(delay: float, delay_max: float | None = None) -> AsyncIterator[str]:
    """The fake OpenAI-compatible provider in its own process; yields its base URL.

    With `delay_max`, each answer comes after a uniform random delay in [delay, delay_max].
    """
    port = free_port()
    argv = [
        sys.executable,
        str(ROOT / "tests" / "fakes" / "openai_server.py"),
        "--port",
        str(port),
        "--delay",
        str(delay),
    ]
    if delay_max is not None:
        argv += ["--delay-max", str(delay_max)]
    child = Child("fake-provider", argv, dict(os.environ))
    try:
        await wait_tcp(child, port, budget=30.0)
        yield f"http://{HOST}:{port}/v1"
    finally:
        child.stop()


@asynccontextmanager
async def sentinel(
    name: str,
    *,
    redis_url: str,
    provider_url: str,
    module: str = "app",
    extra: dict[str, str] | None = None,
    started: Callable[[Child], None] | None = None,
    tree: Path = ROOT,
    workers: str | None = "1",
) -> AsyncIterator[str]:
    """`python -m MODULE` (Sentinel) in its own process against Redis and the provider;
    `started` is handed the process once it answers (to inspect its pid). `tree`: the
    checkout it runs from (another commit's, for a before/after in one sitting). `workers`:
    its WEB_CONCURRENCY (one uvicorn worker by default, results.md's setting); None leaves
    this process's own WEB_CONCURRENCY to it, or none (app/serving.py's default: one worker
    per two cores), as `make run` would."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in _SETTING_NAMES}
    env.update(
        {
            "REDIS_URL": redis_url,
            "GROQ_API_KEY": "bench",
            "GROQ_BASE_URL": provider_url,
            "HOST": HOST,
            "PORT": str(port),
        }
    )
    if workers is not None:
        env["WEB_CONCURRENCY"] = workers
    env.update(extra or {})
    child = Child(name, [sys.executable, "-m", module], env, cwd=tree)
    base_url = f"http://{HOST}:{port}"
    try:
        await _wait_healthy(child, base_url, budget=120.0)
        if started is not None:
            started(child)
        yield base_url
    finally:
        child.stop()


async def _wait_healthy(child: Child, base_url: str, budget: float) -> None:
    """Poll GET /health until it answers 200, for up to `budget` seconds."""
    deadline = time.monotonic() + budget
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as session:
        while time.monotonic() < deadline:
            child.check_alive()
            try:
                async with session.get(f"{base_url}/health") as response:
                    if response.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{child.name} not healthy after {budget:g} s:\n{child.tail()}")
