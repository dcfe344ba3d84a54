"""Integration fixtures: a real Redis Stack, a local OpenAI-compatible server, Sentinel itself."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
import redis
from litestar.testing import AsyncTestClient

from app.embedded_redis import EmbeddedRedis
from app.main import create_app
from app.settings import Settings, load_settings
from tests.containers import engine
from tests.fakes.openai_server import FakeOpenAI
from tests.integration.servers import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def redis_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """One Redis Stack server (with RediSearch) for the whole session.

    A testcontainers container (REDIS_STACK_IMAGE) when a Docker engine answers; with `CI` set
    and none answering, a failure; otherwise (a laptop without Docker) the embedded server,
    and the run says so.
    """
    if engine.docker_client() is None:
        if engine.in_ci():
            pytest.fail(
                f"no Docker engine answers at {engine.engine_address()}: CI runs the "
                "integration suite on a Redis Stack container, not the embedded server "
                "(.ci/run starts an engine)",
                pytrace=False,
            )
        _say(
            request,
            f"redis_stack: no Docker engine answers at {engine.engine_address()}; "
            "using the embedded Redis Stack server instead of a container",
        )
        server = EmbeddedRedis(
            port=free_port(), data_dir=tmp_path_factory.mktemp("redis-stack"), appendonly=False
        )
        server.start_sync()
        try:
            yield server.url
        finally:
            server.stop_sync()
        return
    # Leaving the `with` removes the container, whatever happened inside it.
    with engine.redis_stack_container() as container:
        url = engine.redis_url(container)
        _say(request, f"redis_stack: {engine.redis_stack_image()} container at {url}")
        yield url


def _say(request: pytest.FixtureRequest, line: str) -> None:
    """A line on the terminal, past pytest's output capture."""
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(f"\n{line}")


@pytest.fixture
def redis_url(redis_stack: str) -> Iterator[str]:
    """The session's Redis Stack, emptied (keys and indexes) before each test."""
    client = redis.Redis.from_url(redis_stack)
    for name in client.execute_command("FT._LIST"):
        client.execute_command("FT.DROPINDEX", name)
    client.flushall()
    client.close()
    return redis_stack


@pytest.fixture(scope="session")
def fake_llm_server() -> Iterator[FakeOpenAI]:
    """A local OpenAI-compatible server standing in for Groq."""
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def fake_llm(fake_llm_server: FakeOpenAI) -> FakeOpenAI:
    """The fake provider with its call log and scripted faults cleared."""
    fake_llm_server.reset()
    return fake_llm_server


@pytest.fixture
def make_settings(redis_url: str, fake_llm: FakeOpenAI) -> Callable[..., Settings]:
    """Settings for an in-process app against the test Redis and the fake provider."""

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "redis_url": redis_url,
            "groq_api_key": "test-key",
            "groq_base_url": fake_llm.base_url,
            "upstream_timeout": 5.0,
            "verify_sample_rate": 0.0,  # as in SentinelProcess: tests opt in
            # Budgets far above a healthy Redis's: a test about something else must not turn
            # into a bypass because CI's containerized Redis stalled once (seen: a KNN past
            # 250 ms). Tests of the budgets set their own.
            "cache_lookup_timeout_ms": 2000,
            "cache_write_timeout_ms": 2000,
            # Likewise a new connection: CI's Redis container sits behind docker-proxy, where a
            # connect once took over the 500 ms default during an app's start-up (seen failing
            # test_api's setup with "Timeout connecting to server"). Tests of it set their own.
            "redis_connect_timeout_ms": 5000,
        }
        values.update(overrides)
        return load_settings({}, **values)

    return build


@pytest.fixture
async def client(make_settings: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on an in-process Sentinel (lifespan run) with default test settings."""
    async with app_client(make_settings()) as http:
        yield http


class app_client:
    """`async with app_client(settings) as http`: Sentinel in-process, lifespan included."""

    def __init__(self, settings: Settings) -> None:
        self._test_client = AsyncTestClient(app=create_app(settings))

    async def __aenter__(self) -> httpx.AsyncClient:
        return await self._test_client.__aenter__()

    async def __aexit__(self, *exc: object) -> None:
        await self._test_client.__aexit__(*exc)


class SentinelProcess:
    """Sentinel started as `python -m app` in its own process, reached over real HTTP."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("GROQ_", "JINA_"))}
        full_env.update(env)
        full_env["PORT"] = str(self.port)
        # No background re-asking of semantic hits unless a test wants it: it would add
        # provider calls that tests counting calls do not expect.
        full_env.setdefault("VERIFY_SAMPLE_RATE", "0")
        # As in make_settings: budgets a stall of CI's Redis cannot reach (unless a test
        # sets its own).
        full_env.setdefault("CACHE_LOOKUP_TIMEOUT_MS", "2000")
        full_env.setdefault("CACHE_WRITE_TIMEOUT_MS", "2000")
        # One process unless a test asks for workers: /health's counters are per process.
        full_env.setdefault("WEB_CONCURRENCY", "1")
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app"],
            cwd=ROOT,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until /health answers 200, or fail with the process's log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"sentinel exited early:\n{self.logs()}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"sentinel not ready after {timeout}s:\n{self.logs()}")

    def stop(self) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode

    def wait_for_log(self, fragment: str, timeout: float = 5.0) -> str:
        """The log once it holds `fragment` (a request is logged after its response is sent)."""
        deadline = time.monotonic() + timeout
        while fragment not in (logs := self.logs()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{fragment!r} not logged within {timeout}s:\n{logs}")
            time.sleep(0.05)
        return logs

    def logs(self) -> str:
        """Everything the process wrote so far."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def start_sentinel(
    tmp_path: Path,
) -> Iterator[Callable[[dict[str, str]], SentinelProcess]]:
    """Start Sentinel processes with the given environment; all are stopped afterwards."""
    started: list[SentinelProcess] = []

    def start(env: dict[str, str]) -> SentinelProcess:
        process = SentinelProcess(env, tmp_path / f"sentinel-{len(started)}.log")
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """An aiohttp session for a provider or embedder under test (closed afterwards)."""
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis Stack server of this test's own (not the shared one), stopped afterwards."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def start_on(
    start_sentinel: Callable[[dict[str, str]], SentinelProcess], fake_llm: FakeOpenAI
) -> Callable[..., SentinelProcess]:
    """`start_on(redis_url, **settings)`: a Sentinel process on that Redis with the fake provider
    as Groq and the given settings (environment variables), started but not waited for."""

    def start(redis_url: str, **settings: str) -> SentinelProcess:
        groq = {"GROQ_API_KEY": "test-key", "GROQ_BASE_URL": fake_llm.base_url}
        return start_sentinel({"REDIS_URL": redis_url, **groq, **settings})

    return start
