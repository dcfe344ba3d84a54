"""docker-compose.yml: it validates, says what the README promises, and really runs."""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path
from typing import Any

import docker
import httpx
import msgspec
import pytest

from app.settings import Settings
from tests.containers.conftest import COMPOSE_VARIABLES, ROOT, ComposeProject

pytestmark = pytest.mark.integration

REDIS_CLI = "/opt/redis-stack/bin/redis-cli"


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def published_ports(service: dict[str, Any]) -> list[tuple[str, int]]:
    """(host side, container port) of a service's `ports`, in compose v1 or v2 `config` form."""
    found = []
    for port in service.get("ports", []):
        if isinstance(port, dict):  # v2: {"host_ip":, "published":, "target":}
            host = f"{port.get('host_ip', '')}:{port.get('published', '')}".lstrip(":")
            found.append((host, int(port["target"])))
        else:  # v1: "127.0.0.1:8000:8000/tcp"
            *host, target = str(port).split("/")[0].split(":")
            found.append((":".join(host), int(target)))
    return found


def test_compose_config_validates_and_keeps_its_promises(
    compose_command: list[str], tmp_path: Path
) -> None:
    project = ComposeProject(
        compose_command, "sentinel-config-test", tmp_path / "test.env", {"GROQ_API_KEY": "k"}
    )
    config = project.config()
    services = config["services"]
    assert set(services) == {"sentinel", "redis"}
    sentinel, redis = services["sentinel"], services["redis"]

    # Only Sentinel is published, on 8000, and by default on loopback only.
    assert published_ports(sentinel) == [("127.0.0.1:8000", 8000)]
    assert "ports" not in redis
    # Sentinel starts once Redis is healthy, and finds it by its service name.
    assert sentinel["depends_on"]["redis"]["condition"] == "service_healthy"
    assert sentinel["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    assert sentinel["image"] == "sentinel:latest"
    assert sentinel["environment"]["GROQ_API_KEY"] == "k"  # the env file reached the container

    # Redis: a PING and a search-module check, AOF on a named volume, memory bounded.
    health = " ".join(redis["healthcheck"]["test"])
    assert "PING" in health
    assert "FT._LIST" in health
    assert any(str(v).startswith("redis-data:/data") or _is_volume(v, "redis-data", "/data")
               for v in redis["volumes"])  # fmt: skip
    assert "redis-data" in config["volumes"]
    assert redis["image"] == "redis/redis-stack-server:7.4.0-v3"
    conf = (ROOT / "infra/redis/redis.conf").read_text()
    assert re.search(r"^appendonly yes$", conf, re.MULTILINE)
    assert re.search(r"^maxmemory 256mb$", conf, re.MULTILINE)
    assert re.search(r"^maxmemory-policy volatile-lru$", conf, re.MULTILINE)
    assert re.search(r"^loadmodule \S+/redisearch\.so PARTIAL_INDEXED_DOCS 1$", conf, re.MULTILINE)


def _is_volume(volume: Any, source: str, target: str) -> bool:
    """A compose v2 long-form volume entry."""
    return (
        isinstance(volume, dict)
        and volume.get("source") == source
        and volume.get("target") == target
    )


def test_env_example_lists_every_variable() -> None:
    listed = set(
        re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.MULTILINE)
    )
    settings = {field.encode_name for field in msgspec.structs.fields(Settings)}
    # REDIS_URL is the compose file's; the embedded server's settings do not apply in a container.
    # SENTINEL_ENV_FILE is for tests; WEB_CONCURRENCY and PROMETHEUS_MULTIPROC_DIR are read by
    # app/serving.py (and prometheus-client), not by Settings.
    compose = (COMPOSE_VARIABLES - {"SENTINEL_ENV_FILE"}) | {
        "WEB_CONCURRENCY",
        "PROMETHEUS_MULTIPROC_DIR",
    }
    expected = (settings | compose) - {"EMBEDDED_REDIS_PORT", "EMBEDDED_REDIS_DIR"}
    assert expected - listed == set(), "add these to .env.example"
    assert listed - expected - {"REDIS_URL"} == set(), "these are not read by anything"


def wait_for_health(base_url: str, timeout: float = 180.0) -> None:
    """Poll /health until it answers 200."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{base_url}/health", timeout=5)
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text[:300]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.5)
    raise AssertionError(f"{base_url}/health not 200 after {timeout:g} s: {last}")


def query(base_url: str, prompt: str) -> httpx.Response:
    """POST /v1/query."""
    return httpx.post(f"{base_url}/v1/query", json={"prompt": prompt}, timeout=60)


def indexed_docs(project: ComposeProject, index: str) -> int | None:
    """num_docs of a RediSearch index in the redis service, None while Redis does not answer."""
    try:
        result = project.run("exec", "-T", "redis", REDIS_CLI, "-e", "FT.INFO", index)
    except AssertionError:
        return None
    lines = result.stdout.split()
    return int(lines[lines.index("num_docs") + 1])


def test_compose_up_answers_and_persists(
    compose_command: list[str],
    docker_engine: docker.DockerClient,
    sentinel_image: str,
    tmp_path: Path,
) -> None:
    """Up with the locally built images, a miss then a hit, the hit kept across a Redis
    restart (AOF on the volume), maxmemory from the env file; then down -v."""
    port = free_port()
    project = ComposeProject(
        compose_command,
        f"sentinel-compose-test-{os.getpid()}",
        tmp_path / "test.env",
        {
            "GROQ_API_KEY": "test-key",
            # The fake upstream shares the sentinel container's network namespace.
            "GROQ_BASE_URL": "http://127.0.0.1:8099/v1",
            "SENTINEL_PORT": f"127.0.0.1:{port}",
            "REDIS_MAXMEMORY": "128mb",
        },
        overrides=("tests/containers/compose.fake-upstream.yml",),
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        project.run("up", "-d", "--no-build")
        wait_for_health(base_url)

        first = query(base_url, "What does a semantic cache store?")
        assert first.status_code == 200, first.text
        assert first.json()["match"] == "miss"
        second = query(base_url, "What does a semantic cache store?")
        assert second.status_code == 200, second.text
        assert second.json()["match"] == "exact"
        assert second.json()["response"] == first.json()["response"]

        redis_cli = ("exec", "-T", "redis", REDIS_CLI)
        assert project.run(*redis_cli, "CONFIG", "GET", "maxmemory").stdout.split() == [
            "maxmemory",
            str(128 * 1024 * 1024),
        ]
        assert "volatile-lru" in project.run(*redis_cli, "CONFIG", "GET", "maxmemory-policy").stdout
        assert "true" in project.run(*redis_cli, "FT.CONFIG", "GET", "PARTIAL_INDEXED_DOCS").stdout

        # The entry is in the AOF on the volume: a restarted Redis loads it back into the index.
        index = httpx.get(f"{base_url}/health", timeout=5).json()["index"]
        project.run("restart", "redis")
        deadline = time.monotonic() + 120
        while (docs := indexed_docs(project, index)) is None:
            assert time.monotonic() < deadline, "Redis did not come back after a restart"
            time.sleep(0.5)
        assert docs >= 1
        # Sentinel serves it again once its client has reconnected (until then it answers
        # without its cache).
        while True:
            again = query(base_url, "What does a semantic cache store?")
            if again.status_code == 200 and again.json()["match"] == "exact":
                break
            assert time.monotonic() < deadline, f"no exact hit after the restart: {again.text}"
            time.sleep(0.5)
    except BaseException:
        print(project.run("logs", "--no-color", "--tail", "60").stdout)  # shown on failure
        raise
    finally:
        project.run("down", "-v", "--remove-orphans", "--timeout", "30")
    left = docker_engine.containers.list(
        all=True, filters={"label": f"com.docker.compose.project={project.name}"}
    )
    assert left == []
