"""Container fixtures: the engine, the service image built from the Dockerfile, docker compose."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.containers import engine

ROOT = Path(__file__).resolve().parents[2]
# The name docker-compose.yml gives the service image.
SENTINEL_IMAGE = "sentinel:latest"
# Variables docker-compose.yml, infra/redis/start.sh and infra/container/serve.py read besides
# Sentinel's settings (.env.example lists them too).
COMPOSE_VARIABLES = frozenset(
    {"SENTINEL_PORT", "SENTINEL_ENV_FILE", "REDIS_MAXMEMORY", "REDIS_MAXMEMORY_POLICY"}
)


@pytest.fixture(scope="session")
def docker_engine() -> docker.DockerClient:
    """The Docker engine; skips on a laptop without one, fails in CI."""
    return engine.require_engine()


@pytest.fixture(scope="session")
def sentinel_image(docker_engine: docker.DockerClient) -> str:
    """The service image, built from the Dockerfile once per session.

    With the docker CLI, as infra/images.sh builds it, so the layer cache of a CI build (or a
    developer's) makes this quick. SENTINEL_BASE_IMAGE replaces the Dockerfile's python slim
    base (CI: the one infra/images.sh makes with debootstrap).
    """
    docker_cli = shutil.which("docker")
    if docker_cli is None:
        pytest.fail("the docker CLI is missing (it builds the image)", pytrace=False)
    base = os.environ.get("SENTINEL_BASE_IMAGE", "").strip()
    build_args = ["--build-arg", f"BASE_IMAGE={base}"] if base else []
    result = subprocess.run(
        [docker_cli, "build", *build_args, "--tag", SENTINEL_IMAGE, str(ROOT)],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            f"docker build failed:\n{(result.stdout + result.stderr)[-4000:]}", pytrace=False
        )
    docker_engine.images.get(SENTINEL_IMAGE)
    return SENTINEL_IMAGE


@pytest.fixture(scope="session")
def compose_command() -> list[str]:
    """The compose command: the `docker compose` plugin, else Debian's `docker-compose`."""
    docker_cli = shutil.which("docker")
    if docker_cli is not None:
        probe = subprocess.run(
            [docker_cli, "compose", "version"], capture_output=True, check=False, timeout=30
        )
        if probe.returncode == 0:
            return [docker_cli, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy is not None:
        return [legacy]
    message = "neither `docker compose` nor `docker-compose` is installed"
    if engine.in_ci():
        pytest.fail(f"{message}; CI must run the compose tests (.ci/run installs one)")
    pytest.skip(message)


class ComposeProject:
    """docker-compose.yml (plus override files) as one project with its own env file.

    The env file takes the place of .env, both for interpolation (--env-file) and for the
    sentinel container's settings (SENTINEL_ENV_FILE), so a developer's .env is never read.
    """

    def __init__(
        self,
        command: list[str],
        name: str,
        env_file: Path,
        settings: dict[str, str],
        overrides: tuple[str, ...] = (),
    ) -> None:
        self.command = command
        self.name = name
        self.env_file = env_file
        env_file.write_text(
            "".join(f"{key}={value}\n" for key, value in settings.items())
            + f"SENTINEL_ENV_FILE={env_file}\n"
        )
        self.files = ["docker-compose.yml", *overrides]

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run a compose subcommand from the repository root; raise with its output on failure."""
        argv = [*self.command, "--env-file", str(self.env_file), "-p", self.name]
        for file in self.files:
            argv += ["-f", file]
        # The shell's values would win over the env file's in interpolation: leave them out.
        environ = {key: value for key, value in os.environ.items() if key not in COMPOSE_VARIABLES}
        result = subprocess.run(
            [*argv, *args],
            cwd=ROOT,
            env=environ,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise AssertionError(
                f"compose {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    def config(self) -> dict[str, Any]:
        """The resolved configuration; `config` validates the files first."""
        import yaml  # noqa: PLC0415 - only the compose tests read YAML

        parsed: dict[str, Any] = yaml.safe_load(self.run("config").stdout)
        return parsed
