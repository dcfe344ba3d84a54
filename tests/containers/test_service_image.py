"""The service image: built from the Dockerfile, run beside a Redis Stack container.

Both sit on an internal network (no route out of it): a miss answered and stored, then a hit,
prove the image needs nothing from the internet at run time (the embedder's weights and
tokenizer are inside). The fake upstream runs inside the sentinel container and requests are
sent from there too (docker exec), which works on any engine, remote ones included.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import docker
import pytest
from testcontainers.core.container import DockerContainer
from testcontainers.core.network import Network
from testcontainers.core.wait_strategies import HealthcheckWaitStrategy

from tests.containers import engine
from tests.containers.conftest import ROOT

pytestmark = pytest.mark.integration

FAKE_PORT = 8099
SECOND = 1_000_000_000  # Docker health check durations are in nanoseconds
# Run in the sentinel container: one HTTP request to the service, printed back as JSON.
HTTP_CLIENT = """
import json, sys, urllib.error, urllib.request
method, path, body = sys.argv[1:4]
request = urllib.request.Request(
    "http://127.0.0.1:8000" + path, method=method, data=body.encode() or None,
    headers={"content-type": "application/json"})
try:
    with urllib.request.urlopen(request, timeout=60) as response:
        status, headers, data = response.status, dict(response.headers), response.read()
except urllib.error.HTTPError as error:
    status, headers, data = error.code, dict(error.headers), error.read()
headers = {name.lower(): value for name, value in headers.items()}
print(json.dumps({"status": status, "headers": headers, "body": json.loads(data)}))
"""


# Run in the sentinel container: wait until something listens on 127.0.0.1:PORT.
WAIT_FOR_PORT = """
import socket, sys, time
deadline = time.monotonic() + 30
while True:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit("nothing listens on port " + sys.argv[1])
        time.sleep(0.1)
"""


class Service:
    """The running sentinel container, spoken to over HTTP from inside it."""

    def __init__(self, container: DockerContainer) -> None:
        self.container = container

    def request(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        """{"status", "headers" (names in lower case), "body"} of one request."""
        payload = "" if body is None else json.dumps(body)
        code, output = self.container.exec(["python3", "-c", HTTP_CLIENT, method, path, payload])
        assert code == 0, output.decode(errors="replace")
        answer: dict[str, Any] = json.loads(output)
        return answer

    def start_fake_upstream(self) -> None:
        """tests/fakes/openai_server.py, run inside the container: the service reaches it on
        127.0.0.1 (a fake that listens on loopback only needs no other way in)."""
        self.container.copy_into_container(
            ROOT / "tests/fakes/openai_server.py", "/tmp/fakes/openai_server.py"
        )
        self.container.get_wrapped_container().exec_run(
            ["python3", "/tmp/fakes/openai_server.py", "--port", str(FAKE_PORT)], detach=True
        )
        code, output = self.container.exec(["python3", "-c", WAIT_FOR_PORT, str(FAKE_PORT)])
        assert code == 0, output.decode(errors="replace")

    def logs(self) -> str:
        """stdout and stderr so far."""
        stdout, stderr = self.container.get_logs()
        return (stdout + stderr).decode(errors="replace")


@pytest.fixture(scope="module")
def service(docker_engine: docker.DockerClient, sentinel_image: str) -> Iterator[Service]:
    """Redis Stack and Sentinel on an internal network, a fake upstream inside the sentinel
    container; the containers and the network are removed afterwards, failure or not."""
    redis = engine.redis_stack_container(publish=False)
    with (
        Network(docker_network_kw={"internal": True}) as network,
        redis.with_network(network).with_network_aliases("redis"),
        _sentinel(sentinel_image, network) as sentinel,
    ):
        service = Service(sentinel)
        service.start_fake_upstream()
        yield service


def _sentinel(image: str, network: Network) -> DockerContainer:
    return (
        DockerContainer(image)
        .with_network(network)
        .with_envs(
            REDIS_URL="redis://redis:6379/0",
            GROQ_API_KEY="test-key",
            GROQ_BASE_URL=f"http://127.0.0.1:{FAKE_PORT}/v1",
        )
        # The image's own HEALTHCHECK, probed every second instead of every 15 s.
        .with_kwargs(
            healthcheck={"interval": SECOND, "timeout": 5 * SECOND, "retries": 60},
            labels={"org.sentinel.tests": "service-image"},
        )
        .waiting_for(HealthcheckWaitStrategy().with_startup_timeout(120))
    )


def test_image_serves_a_miss_then_a_hit_offline(service: Service) -> None:
    health = service.request("GET", "/health")
    assert health["status"] == 200, health
    assert health["body"]["status"] == "ok"
    assert health["body"]["redis_mode"] == "external"

    prompt = {"prompt": "How can I stop being so hard on myself?"}
    miss = service.request("POST", "/v1/query", prompt)
    assert miss["status"] == 200, miss
    assert miss["body"]["match"] == "miss"
    assert miss["body"]["cache_hit"] is False
    hit = service.request("POST", "/v1/query", prompt)
    assert hit["status"] == 200, hit
    assert hit["body"]["match"] == "exact"
    assert hit["body"]["cache_hit"] is True
    assert hit["body"]["response"] == miss["body"]["response"]

    # JSON log lines from the app itself (not uvicorn's default format).
    assert '"logger":"sentinel.lifespan"' in service.logs()


def test_image_runs_unprivileged_and_stops_gracefully(service: Service) -> None:
    code, uid = service.container.exec(["id", "-u"])
    assert code == 0
    assert uid.strip() != b"0"

    wrapped = service.container.get_wrapped_container()
    wrapped.stop(timeout=30)  # SIGTERM: uvicorn drains, the lifespan closes Redis and sessions
    wrapped.reload()
    assert wrapped.attrs["State"]["ExitCode"] == 0, service.logs()
    assert "Application shutdown complete" in service.logs()


def test_image_metadata(docker_engine: docker.DockerClient, sentinel_image: str) -> None:
    config = docker_engine.images.get(sentinel_image).attrs["Config"]
    assert config["User"] == "sentinel"
    assert "8000/tcp" in config["ExposedPorts"]
    assert "/health" in " ".join(config["Healthcheck"]["Test"])
    assert config["Cmd"] == ["python3", "serve.py"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["HOST"] == "0.0.0.0"
    assert env["PORT"] == "8000"
