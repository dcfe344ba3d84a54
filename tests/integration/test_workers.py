"""WEB_CONCURRENCY worker processes: one provider call for identical requests, metrics that
count every worker, and one embedded Redis for all of them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.fakes.openai_server import FakeOpenAI
from tests.integration.conftest import SentinelProcess
from tests.integration.servers import free_port, wait_for
from tests.integration.test_embedded_redis import listening, redis_pids
from tests.integration.test_observability import samples

pytestmark = pytest.mark.integration

QUESTION = "Which element has the atomic number 26?"
MODEL = "groq/llama-3.1-8b-instant"
# Two workers each load the embedder on two shared cores.
START_TIMEOUT = 120.0


def children_of(parent: int) -> list[int]:
    """The pids of a process's children."""
    children: list[int] = []
    for task in Path(f"/proc/{parent}/task").iterdir():
        children += [int(pid) for pid in (task / "children").read_text().split()]
    return children


def workers_of(parent: int) -> list[int]:
    """uvicorn's worker processes (spawned by multiprocessing) under a Sentinel process."""
    return [
        pid
        for pid in children_of(parent)
        if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]


def environ_of(pid: int) -> dict[str, str]:
    """A process's environment as it started."""
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    pairs = (item.decode().partition("=") for item in raw if item)
    return {name: value for name, _, value in pairs}


def counted_pids(directory: Path) -> set[int]:
    """The workers that wrote counters in a Prometheus multiprocess directory."""
    return {int(path.stem.rpartition("_")[2]) for path in directory.glob("counter_*.db")}


def _two(pids: list[int]) -> list[int] | None:
    return pids if len(pids) == 2 else None


def _attached_twice(logs: str) -> str | None:
    return logs if logs.count("attached to it") == 2 else None


async def burst(base_url: str, n: int, prompt: str) -> list[httpx.Response]:
    """n identical requests at once, each on its own connection."""
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=30, limits=limits) as http:
        return await asyncio.gather(
            *(http.post(f"{base_url}/v1/query", json={"prompt": prompt}) for _ in range(n))
        )


def requests_total(base_url: str) -> float:
    """sentinel_requests_total over every outcome, as one worker's GET /metrics shows it."""
    page = samples(httpx.get(f"{base_url}/metrics", timeout=10).text)
    return sum(v for (name, _), v in page.items() if name == "sentinel_requests_total")


async def test_two_workers_coalesce_and_count_every_request(
    start_on: Callable[..., SentinelProcess], redis_url: str, fake_llm: FakeOpenAI
) -> None:
    sentinel = start_on(
        redis_url,
        WEB_CONCURRENCY="2",
        UPSTREAM_TIMEOUT="10",
        # 20 requests at once on 2 cores: a bypassed lookup is (rightly) not coalesced.
        CACHE_LOOKUP_TIMEOUT_MS="2000",
        METRICS_FLUSH_INTERVAL_MS="200",
    )
    sentinel.wait_ready(timeout=START_TIMEOUT)
    workers = wait_for(lambda: _two(workers_of(sentinel.process.pid)), "two worker processes")
    # The parent made one Prometheus directory (none was set) and gave it to both workers.
    directories = {environ_of(pid).get("PROMETHEUS_MULTIPROC_DIR") for pid in workers}
    assert len(directories) == 1
    directory = Path(str(directories.pop()))
    assert directory.is_dir()

    fake_llm.delay = 1.0  # every request arrives while the first is in flight
    try:
        responses = await burst(sentinel.base_url, 20, QUESTION)
    finally:
        fake_llm.delay = 0.0
    assert [r.status_code for r in responses] == [200] * 20
    assert fake_llm.call_count == 1
    assert sorted(r.json()["match"] for r in responses) == ["exact"] * 19 + ["miss"]

    # More hits on fresh connections until both workers have answered some.
    sent = 20
    deadline = time.monotonic() + 30
    while counted_pids(directory) != set(workers):
        assert time.monotonic() < deadline, f"only {counted_pids(directory)} of {workers} served"
        hit = httpx.post(f"{sentinel.base_url}/v1/query", json={"prompt": QUESTION}, timeout=10)
        assert hit.json()["match"] == "exact"
        sent += 1
    assert fake_llm.call_count == 1

    # Any worker's /metrics adds both up; /v1/metrics once each worker has flushed to Redis.
    assert requests_total(sentinel.base_url) == sent
    wait_for(
        lambda: httpx.get(f"{sentinel.base_url}/v1/metrics", timeout=10).json()["requests"] == sent,
        f"/v1/metrics counting {sent} requests",
    )

    assert sentinel.stop() == 0
    assert not directory.exists()  # the parent removes the directory it made


def test_two_workers_share_one_embedded_redis_stopped_with_them(
    start_sentinel: Callable[[dict[str, str]], SentinelProcess],
    fake_llm: FakeOpenAI,
    tmp_path: Path,
) -> None:
    port, data_dir = free_port(), tmp_path / "redis"
    sentinel = start_sentinel(
        {
            "WEB_CONCURRENCY": "2",
            "REDIS_URL": "",
            "EMBEDDED_REDIS_PORT": str(port),
            "EMBEDDED_REDIS_DIR": str(data_dir),
            "GROQ_API_KEY": "test-key",
            "GROQ_BASE_URL": fake_llm.base_url,
        }
    )
    sentinel.wait_ready(timeout=START_TIMEOUT)
    logs = wait_for(
        lambda: _attached_twice(sentinel.logs()), "both workers attached to the parent's Redis"
    )
    assert logs.count("embedded Redis started") == 1
    servers = redis_pids(data_dir)
    assert len(servers) == 1
    # Started by the parent (a child of it), not by a worker.
    assert servers[0] in children_of(sentinel.process.pid)
    answer = httpx.post(f"{sentinel.base_url}/v1/query", json={"prompt": QUESTION}, timeout=10)
    assert answer.status_code == 200
    health = httpx.get(f"{sentinel.base_url}/health", timeout=10).json()
    assert health["redis_mode"] == "embedded"

    assert sentinel.stop() == 0
    assert redis_pids(data_dir) == []
    assert not listening(port)
    assert f"embedded Redis on 127.0.0.1:{port} stopped" in sentinel.log_path.read_text()


def test_web_concurrency_must_be_a_small_whole_number(
    start_sentinel: Callable[[dict[str, str]], SentinelProcess], redis_url: str
) -> None:
    for bad in ("0", "two", "65"):
        sentinel = start_sentinel({"WEB_CONCURRENCY": bad, "REDIS_URL": redis_url})
        assert sentinel.process.wait(timeout=30) == 2
        assert "WEB_CONCURRENCY" in sentinel.logs()
