"""fly.toml: what it promises, checked against the files it deploys (flyctl cannot run here).

fly.toml deploys docker-compose.yml ([build.compose]); flyctl reads that file with its own
parser, without variable interpolation, so the compose keys it uses must hold literal values.
"""

from __future__ import annotations

import importlib.util
import re
import tomllib
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from app.main import create_app
from app.settings import load_settings
from tests.containers.conftest import ROOT

# Compose keys flyctl's converter reads (internal/containerconfig/compose.go); it ignores the
# others (env_file, ports, restart, stop_grace_period, top-level volumes).
FLYCTL_KEYS = ("image", "build", "environment", "volumes", "command", "entrypoint", "user",
               "healthcheck", "depends_on")  # fmt: skip


@pytest.fixture(scope="module")
def fly() -> dict[str, Any]:
    """fly.toml, parsed."""
    with (ROOT / "fly.toml").open("rb") as file:
        return tomllib.load(file)


@pytest.fixture(scope="module")
def compose_file(fly: dict[str, Any]) -> dict[str, Any]:
    """The compose file fly.toml deploys, parsed as flyctl sees it (no interpolation)."""
    path = ROOT / fly["build"]["compose"]["file"]
    parsed: dict[str, Any] = yaml.safe_load(path.read_text())
    return parsed


def redis_conf(name: str) -> str:
    """A directive's value in infra/redis/redis.conf."""
    text = (ROOT / "infra/redis/redis.conf").read_text()
    found = re.search(rf"^{re.escape(name)} (.+)$", text, re.MULTILINE)
    assert found, f"{name} missing from infra/redis/redis.conf"
    return found.group(1).strip()


def test_http_service_reaches_the_app_on_its_port(fly: dict[str, Any]) -> None:
    service = fly["http_service"]
    port = service["internal_port"]
    assert port == 8000
    assert fly["env"]["PORT"] == str(port)
    assert fly["env"]["HOST"] == "0.0.0.0"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"EXPOSE {port}" in dockerfile
    assert f"PORT={port}" in dockerfile


def test_health_check_path_is_a_route_of_the_app(fly: dict[str, Any]) -> None:
    checks = fly["http_service"]["checks"]
    assert checks, "fly.toml has no HTTP health check"
    paths = {route.path for route in create_app(load_settings({})).routes}
    for check in checks:
        assert check["method"] == "GET"
        assert check["path"] in paths


def test_redis_url_points_at_the_sidecar(fly: dict[str, Any], compose_file: dict[str, Any]) -> None:
    url = urlsplit(fly["env"]["REDIS_URL"])
    # Containers of one Machine share its network namespace: the sidecar is on loopback.
    assert url.scheme == "redis"
    assert url.hostname in {"127.0.0.1", "localhost"}
    assert url.port == int(redis_conf("port"))
    redis = compose_file["services"]["redis"]
    assert redis["image"].startswith("redis/redis-stack-server:")
    assert compose_file["services"]["sentinel"]["depends_on"]["redis"]["condition"] == (
        "service_healthy"
    )


def test_redis_data_lives_on_the_volume(fly: dict[str, Any]) -> None:
    mounts = fly["mounts"]
    assert mounts["destination"] == redis_conf("dir") == "/data"
    assert redis_conf("appendonly") == "yes"
    # The README's steps create the volume fly.toml mounts.
    readme = (ROOT / "README.md").read_text()
    assert f"fly volumes create {mounts['source']}" in readme


def test_secrets_come_from_fly_secrets(fly: dict[str, Any]) -> None:
    assert not [key for key in fly["env"] if key.endswith(("_KEY", "_KEYS", "_TOKEN", "PASSWORD"))]
    assert "fly secrets set GROQ_API_KEY=" in (ROOT / "README.md").read_text()


def test_a_cache_machine_stays_up(fly: dict[str, Any]) -> None:
    service = fly["http_service"]
    # Stopping on idle would make the next caller wait for Redis to replay its AOF.
    assert service["auto_stop_machines"] in {"off", False}
    assert service["min_machines_running"] >= 1
    assert service["auto_start_machines"] is True


def test_shutdown_fits_in_the_kill_timeout(fly: dict[str, Any]) -> None:
    spec = importlib.util.spec_from_file_location("serve", ROOT / "infra/container/serve.py")
    assert spec is not None
    assert spec.loader is not None
    serve = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serve)
    assert fly["kill_signal"] == "SIGTERM"
    assert fly["kill_timeout"] > serve.GRACEFUL_SHUTDOWN_SECONDS


def test_compose_file_is_literal_where_flyctl_reads_it(compose_file: dict[str, Any]) -> None:
    services = compose_file["services"]
    assert [name for name, service in services.items() if "build" in service] == ["sentinel"]
    for name, service in services.items():
        for key in FLYCTL_KEYS:
            assert "${" not in str(service.get(key, "")), f"{name}.{key} needs interpolation"
        environment = service.get("environment", {})
        # flyctl decodes `environment` into a map of strings: the list form fails its parser.
        assert isinstance(environment, dict), f"{name}.environment must be a mapping"
        for value in environment.values():
            assert value is None or isinstance(value, str), f"{name}.environment: {value!r}"
        # Files the sidecar needs are bind mounts of files flyctl copies into the container.
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).is_file(), f"{source} is not a file"
