"""Servers a test owns alone: a Redis Stack it may kill, pause and restart."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from app.embedded_redis import EmbeddedRedis


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A Redis Stack server for one test, which the test may kill, pause and restart."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.server = EmbeddedRedis(port=self.port, data_dir=data_dir)
        self.paused = False

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def pid(self) -> int:
        pid = self.server.pid
        assert pid is not None
        return pid

    def start(self, timeout: float = 30.0) -> None:
        """Start a server on the same port and directory (it replays the AOF there)."""
        self.server = EmbeddedRedis(port=self.port, data_dir=self.data_dir)
        self.server.start_sync(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL: no SHUTDOWN, no final AOF flush, like a crash or an OOM kill."""
        os.kill(self.pid, signal.SIGKILL)
        self.server.stop_sync()  # reaps it

    def stop(self) -> None:
        self.resume()
        self.server.stop_sync()

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections, nothing is ever answered."""
        os.kill(self.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        if self.paused:
            os.kill(self.pid, signal.SIGCONT)
            self.paused = False

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=10, retry=Retry(NoBackoff(), 0))


def wait_for(check: Callable[[], Any], what: str, timeout: float = 10.0, every: float = 0.1) -> Any:
    """Call `check` until it returns something true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what} (last: {value!r})")
        time.sleep(every)
