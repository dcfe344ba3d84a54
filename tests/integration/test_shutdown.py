"""SIGTERM: in-flight requests finish, then the embedded Redis Stack is stopped cleanly."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.fakes.openai_server import FakeOpenAI
from tests.integration.conftest import SentinelProcess, free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def slow_provider(fake_llm: FakeOpenAI) -> Iterator[FakeOpenAI]:
    fake_llm.delay = 2.0
    yield fake_llm
    fake_llm.delay = 0.0


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_sigterm_lets_in_flight_requests_finish_and_stops_embedded_redis(
    start_sentinel: Callable[[dict[str, str]], SentinelProcess],
    slow_provider: FakeOpenAI,
    tmp_path: Path,
) -> None:
    redis_port = free_port()
    sentinel = start_sentinel(
        {
            # REDIS_URL unset: Sentinel starts and owns its Redis Stack.
            "EMBEDDED_REDIS_PORT": str(redis_port),
            "EMBEDDED_REDIS_DIR": str(tmp_path / "redis"),
            "GROQ_API_KEY": "k",
            "GROQ_BASE_URL": slow_provider.base_url,
        }
    )
    sentinel.wait_ready()
    assert port_open(redis_port)

    answers: list[httpx.Response] = []
    in_flight = threading.Thread(
        target=lambda: answers.append(
            httpx.post(f"{sentinel.base_url}/v1/query", json={"prompt": "Slow one?"}, timeout=30)
        )
    )
    in_flight.start()
    deadline = time.monotonic() + 5
    while slow_provider.call_count == 0 and time.monotonic() < deadline:
        time.sleep(0.02)  # the request has reached the provider: it is in flight
    sentinel.process.send_signal(signal.SIGTERM)
    in_flight.join(timeout=30)

    assert answers, "the in-flight request got no answer"
    assert answers[0].status_code == 200
    assert answers[0].json()["response"] == "answer to: Slow one?"
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status says why.
    assert sentinel.process.wait(timeout=30) in (0, -signal.SIGTERM)
    logs = sentinel.logs()
    assert "stopped (dir" in logs  # the embedded Redis was shut down by Sentinel...
    assert not port_open(redis_port)  # ...and nothing listens on its port any more
    assert (tmp_path / "redis").exists()
    # New connections were refused while shutting down; the server is gone now.
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{sentinel.base_url}/health", timeout=2)
