"""The Docker engine the tests use, and Redis Stack containers on it (testcontainers).

Which engine: whatever DOCKER_HOST names (.ci/run starts a private one, infra/dockerd.sh), else
the default socket. CI must use it: with `CI` set and no engine answering, tests that need one
fail instead of skipping, and the integration suite does not fall back to the embedded Redis.

No registry is assumed: REDIS_STACK_IMAGE names the Redis Stack image (the official
`redis/redis-stack-server:7.4.0-v3` by default; CI builds a local one, infra/images.sh). Ryuk,
testcontainers' reaper, is an image too, so it is disabled and every container here is removed
by the code that started it (context managers), also when a test fails.
"""

from __future__ import annotations

import functools
import gc
import os
import warnings

import docker
import pytest
from docker.errors import DockerException
from testcontainers.core.config import testcontainers_config
from testcontainers.core.container import DockerContainer
from testcontainers.core.wait_strategies import ExecWaitStrategy

DEFAULT_REDIS_STACK_IMAGE = "redis/redis-stack-server:7.4.0-v3"
REDIS_PORT = 6379
# The layout of the official image, which the local one (infra/redis-stack/Dockerfile) keeps.
REDIS_SERVER = "/opt/redis-stack/bin/redis-server"
REDIS_CLI = "/opt/redis-stack/bin/redis-cli"
REDISEARCH = "/opt/redis-stack/lib/redisearch.so"
# Loading a fresh server takes well under a second; pulling an official image can take minutes.
STARTUP_TIMEOUT = 120.0
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}

# Before any container starts: nothing can pull testcontainers/ryuk without a registry.
testcontainers_config.ryuk_disabled = os.environ.get(
    "TESTCONTAINERS_RYUK_DISABLED", "true"
).lower() in {"1", "true", "yes"}


def in_ci() -> bool:
    """Whether this run is CI (the `CI` variable, as CI services and .ci/run set it)."""
    return os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no"}


def engine_address() -> str:
    """Where the engine is looked for, for messages."""
    return os.environ.get("DOCKER_HOST") or "the default socket (DOCKER_HOST unset)"


@functools.cache
def docker_client() -> docker.DockerClient | None:
    """A client of an engine that answers a ping within a few seconds, else None (cached)."""
    with warnings.catch_warnings():
        # docker-py leaves the socket of a refused connection to the garbage collector; with
        # warnings as errors its ResourceWarning would fail an unrelated test later.
        warnings.simplefilter("ignore", ResourceWarning)
        client = _ping()
        gc.collect()
    return client


def _ping() -> docker.DockerClient | None:
    try:
        client = docker.from_env(timeout=10)
    except (DockerException, OSError):
        return None
    try:
        client.ping()
    except (DockerException, OSError):
        client.close()
        return None
    return client


def require_engine() -> docker.DockerClient:
    """The engine; without one, skip (a laptop) or fail (CI: the Docker path must run)."""
    client = docker_client()
    if client is not None:
        return client
    message = f"no Docker engine answers at {engine_address()}"
    if in_ci():
        pytest.fail(
            f"{message}, and CI must run the container tests: start one (infra/dockerd.sh "
            "start, as .ci/run does) and export DOCKER_HOST",
            pytrace=False,
        )
    pytest.skip(f"{message} (CI would fail here)")


def redis_stack_image() -> str:
    """The Redis Stack image the tests run."""
    return os.environ.get("REDIS_STACK_IMAGE", "").strip() or DEFAULT_REDIS_STACK_IMAGE


def redis_stack_command(*, appendonly: bool = False) -> list[str]:
    """redis-server's arguments: only RediSearch, with PARTIAL_INDEXED_DOCS as Sentinel wants.

    Given to the server directly (entrypoint replaced), this is the same on the official image
    (whose entrypoint would load every module and read REDISEARCH_ARGS) and the local one.
    """
    return [
        "--loadmodule", REDISEARCH, "PARTIAL_INDEXED_DOCS", "1",
        "--protected-mode", "no",
        "--save", "",
        "--appendonly", "yes" if appendonly else "no",
    ]  # fmt: skip


def redis_stack_container(*, publish: bool = True) -> DockerContainer:
    """A Redis Stack container, started with `with` (removed on exit, also after a failure).

    Ready once `redis-cli -e FT._LIST` succeeds inside it: the server answers, is done loading,
    and the search module is there. `publish` maps 6379 to a random port on the engine's
    host (on 127.0.0.1 when that host is this machine).
    """
    container = (
        DockerContainer(redis_stack_image())
        .with_command(redis_stack_command())
        .with_kwargs(entrypoint=[REDIS_SERVER], labels={"org.sentinel.tests": "redis-stack"})
        .waiting_for(
            ExecWaitStrategy([REDIS_CLI, "-e", "FT._LIST"]).with_startup_timeout(STARTUP_TIMEOUT)
        )
    )
    if publish:
        # A password-less Redis: on this machine's loopback only, when the engine is local.
        # (docker-py takes (address, None) for "random port on that address".)
        container.ports[f"{REDIS_PORT}/tcp"] = ("127.0.0.1", None) if engine_is_local() else None
    return container


def engine_is_local() -> bool:
    """Whether published ports appear on this machine (a unix socket, or a local TCP host)."""
    host = os.environ.get("DOCKER_HOST", "")
    if not host or host.startswith("unix://"):
        return True
    return any(f"//{name}:" in host or f"//[{name}]:" in host for name in LOCAL_HOSTS)


def redis_url(container: DockerContainer) -> str:
    """redis:// URL of a published Redis Stack container, as seen from this machine."""
    # Published on 127.0.0.1 for a local engine (testcontainers would guess the bridge gateway
    # when it believes it runs inside a container, as on a CI VM).
    host = "127.0.0.1" if engine_is_local() else container.get_container_host_ip()
    return f"redis://{host}:{container.get_exposed_port(REDIS_PORT)}/0"
