"""The embedded Redis Stack: start, search module, persistence, port conflicts, no orphans."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio

from app.embedded_redis import EmbeddedRedis, openssl_lib_dir, server_dir
from app.errors import StartupError
from tests.integration.conftest import ROOT
from tests.integration.servers import free_port

pytestmark = pytest.mark.integration


def listening(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def redis_pids(data_dir: Path) -> list[int]:
    """Pids of live redis-server processes working in data_dir (Redis chdirs to its --dir)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # Redis rewrites its own argv (proc title), so look at its executable and cwd.
            exe = os.readlink(entry / "exe")
            cwd = os.readlink(entry / "cwd")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and exe.endswith("/redis-server") and cwd == str(data_dir.resolve()):
            pids.append(int(entry.name))
    return pids


def wait_until(condition: Callable[[], object], timeout: float = 5.0) -> bool:
    """Poll condition until it is truthy or the timeout passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def servers() -> Iterator[list[EmbeddedRedis]]:
    """Every server a test registers is stopped afterwards, even when an assertion failed."""
    started: list[EmbeddedRedis] = []
    yield started
    for server in reversed(started):
        server.stop_sync()


def make(servers: list[EmbeddedRedis], data_dir: Path, **options: object) -> EmbeddedRedis:
    """An EmbeddedRedis on a free port, registered for cleanup."""
    options.setdefault("port", free_port())
    server = EmbeddedRedis(data_dir=data_dir, **options)  # type: ignore[arg-type]
    servers.append(server)
    return server


async def test_start_answers_ping_with_only_the_search_module(
    tmp_path: Path, servers: list[EmbeddedRedis]
) -> None:
    server = make(servers, tmp_path / "data")
    await server.start()
    assert server.owned
    assert not server.attached
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    client = redis.asyncio.Redis.from_url(server.url, decode_responses=True)
    try:
        assert await client.ping() is True
        names = [module["name"] for module in await client.module_list()]
        assert names == ["search"]
        assert (await client.config_get("protected-mode"))["protected-mode"] == "yes"
        assert (await client.config_get("bind"))["bind"] == "127.0.0.1"
        assert (await client.config_get("appendonly"))["appendonly"] == "yes"
        assert (await client.config_get("dir"))["dir"] == str((tmp_path / "data").resolve())
        # an entry hash (a 500-byte answer, a 768-byte FLOAT16 vector) stays a compact listpack
        assert (await client.config_get("hash-max-listpack-value")) == {
            "hash-max-listpack-value": "4096"
        }
        await client.hset("entry", mapping={"response": "a" * 500, "embedding": "v" * 768})
        assert await client.object("encoding", "entry") == "listpack"
    finally:
        await client.aclose()
    # The server's output goes to the data dir, not to our stdout.
    assert "Ready to accept connections" in server.log_path.read_text()


async def test_hnsw_vector_index_and_knn_query_work(
    tmp_path: Path, servers: list[EmbeddedRedis]
) -> None:
    server = make(servers, tmp_path, appendonly=False)
    await server.start()
    client = redis.asyncio.Redis.from_url(server.url, protocol=2)
    try:
        await client.execute_command(
            "FT.CREATE", "idx", "ON", "HASH", "PREFIX", "1", "doc:", "SCHEMA",
            "vec", "VECTOR", "HNSW", "6", "TYPE", "FLOAT32", "DIM", "4",
            "DISTANCE_METRIC", "COSINE",
        )  # fmt: skip
        await client.hset("doc:a", mapping={"vec": struct.pack("4f", 1, 0, 0, 0)})
        await client.hset("doc:b", mapping={"vec": struct.pack("4f", 0, 1, 0, 0)})
        reply = await client.execute_command(
            "FT.SEARCH", "idx", "*=>[KNN 1 @vec $q]", "PARAMS", "2",
            "q", struct.pack("4f", 0.1, 0.9, 0, 0), "RETURN", "0", "DIALECT", "2",
        )  # fmt: skip
        assert reply == [1, b"doc:b"]
    finally:
        await client.aclose()


async def test_data_and_index_survive_stop_and_start(
    tmp_path: Path, servers: list[EmbeddedRedis]
) -> None:
    port = free_port()
    first = make(servers, tmp_path, port=port)
    await first.start()
    client = redis.asyncio.Redis.from_url(first.url, protocol=2)
    await client.execute_command(
        "FT.CREATE", "idx", "ON", "HASH", "PREFIX", "1", "doc:", "SCHEMA",
        "vec", "VECTOR", "HNSW", "6", "TYPE", "FLOAT32", "DIM", "2", "DISTANCE_METRIC", "L2",
    )  # fmt: skip
    await client.hset("doc:1", mapping={"vec": struct.pack("2f", 1, 2), "note": "kept"})
    await client.aclose()
    await first.stop()
    assert not first.owned
    assert not redis_pids(tmp_path)

    second = make(servers, tmp_path, port=port)
    await second.start()
    assert second.owned
    client = redis.asyncio.Redis.from_url(second.url, protocol=2)
    try:
        assert await client.hget("doc:1", "note") == b"kept"
        assert await client.execute_command("FT._LIST") == [b"idx"]
        info = await client.execute_command("FT.INFO", "idx")
        assert int(dict(zip(info[::2], info[1::2], strict=True))[b"num_docs"]) == 1
    finally:
        await client.aclose()


async def test_load_search_false_gives_a_plain_redis(
    tmp_path: Path, servers: list[EmbeddedRedis]
) -> None:
    server = make(servers, tmp_path, appendonly=False, load_search=False)
    await server.start()
    client = redis.asyncio.Redis.from_url(server.url)
    try:
        assert await client.module_list() == []
        with pytest.raises(redis.ResponseError, match="unknown command"):
            await client.execute_command("FT._LIST")
    finally:
        await client.aclose()


@pytest.mark.parametrize("mode", ["async", "sync"])
async def test_port_held_by_a_foreign_listener_is_refused(
    tmp_path: Path, servers: list[EmbeddedRedis], mode: str
) -> None:
    with socket.socket() as listener:
        # Listening but never answering, like a stuck or non-Redis service.
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        server = make(servers, tmp_path, port=port)
        start = server.start() if mode == "async" else asyncio.to_thread(server.start_sync)
        with pytest.raises(
            StartupError, match=rf"port {port} is in use by another process.*EMBEDDED_REDIS_PORT"
        ):
            await start
    assert not server.owned
    assert not server.attached
    assert not redis_pids(tmp_path)


async def test_port_held_by_a_redis_on_another_dir_is_refused(
    tmp_path: Path, servers: list[EmbeddedRedis]
) -> None:
    other = make(servers, tmp_path / "other", appendonly=False)
    await other.start()
    server = make(servers, tmp_path / "ours", port=other.port)
    with pytest.raises(
        StartupError, match=r"in use by another process \(a Redis with dir .*other\)"
    ):
        await server.start()
    assert not server.attached
    assert not redis_pids(tmp_path / "ours")


async def test_attaches_to_its_own_leftover_and_leaves_it_running(
    tmp_path: Path, servers: list[EmbeddedRedis]
) -> None:
    owner = make(servers, tmp_path)
    await owner.start()
    pid = owner.pid
    # Same port and data dir: a crashed run's server or another worker's.
    guest = make(servers, tmp_path, port=owner.port)
    await guest.start()
    assert guest.attached
    assert not guest.owned
    assert guest.pid is None
    assert redis_pids(tmp_path) == [pid]

    await guest.stop()
    await guest.stop()
    assert not guest.attached
    client = redis.asyncio.Redis.from_url(owner.url)
    try:
        assert await client.ping() is True
    finally:
        await client.aclose()

    await owner.stop()
    assert not redis_pids(tmp_path)
    await owner.stop()  # idempotent
    owner.stop_sync()


async def test_two_starting_at_once_share_one_server(
    tmp_path: Path, servers: list[EmbeddedRedis]
) -> None:
    # Two workers of one deployment: both may see the port free and spawn; the loser of the
    # bind race must attach to the winner instead of failing.
    port = free_port()
    first = make(servers, tmp_path, port=port)
    second = make(servers, tmp_path, port=port)
    await asyncio.gather(first.start(), second.start())
    assert sorted([first.owned, second.owned]) == [False, True]
    assert sorted([first.attached, second.attached]) == [False, True]
    assert len(redis_pids(tmp_path)) == 1


async def test_attach_refuses_a_leftover_without_the_search_module(
    tmp_path: Path, servers: list[EmbeddedRedis]
) -> None:
    plain = make(servers, tmp_path, appendonly=False, load_search=False)
    await plain.start()
    server = make(servers, tmp_path, port=plain.port)
    with pytest.raises(StartupError, match="without the search module"):
        await server.start()
    assert not server.attached


def test_sync_twins_start_attach_and_stop(tmp_path: Path, servers: list[EmbeddedRedis]) -> None:
    owner = make(servers, tmp_path, appendonly=False)
    owner.stop_sync()  # before start: nothing to do
    owner.start_sync()
    owner.start_sync()  # already running: nothing to do
    guest = make(servers, tmp_path, port=owner.port)
    guest.start_sync()
    assert guest.attached
    guest.stop_sync()
    client = redis.Redis.from_url(owner.url)
    try:
        assert client.ping() is True
    finally:
        client.close()
    owner.stop_sync()
    owner.stop_sync()
    assert not redis_pids(tmp_path)


async def test_start_timeout_kills_the_process(
    tmp_path: Path, servers: list[EmbeddedRedis], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = make(servers, tmp_path, appendonly=False)
    # Our server's PING answers never count as its own, so it "never answers" within the
    # budget. (A zero budget raced the server: under load the first PING could come after it
    # listened, and the start then succeeded.)
    monkeypatch.setattr(EmbeddedRedis, "_answered_by_ours", lambda self, info: False)
    with pytest.raises(StartupError, match=r"did not answer PING within 0\.3 s"):
        await server.start(timeout=0.3)
    assert not server.owned
    assert not redis_pids(tmp_path)


def test_attach_waits_while_the_server_loads_its_data(
    tmp_path: Path, servers: list[EmbeddedRedis]
) -> None:
    seed = make(servers, tmp_path)
    seed.start_sync()
    client = redis.Redis.from_url(seed.url)
    client.mset({f"k{i}": "v" for i in range(3000)})
    client.bgrewriteaof()  # keys go to the RDB base file, where key-load-delay applies
    assert wait_until(lambda: client.info("persistence")["aof_rewrite_in_progress"] == 0)
    client.close()
    seed.stop_sync()

    # Someone else's server on our dir that needs about a second to load the dataset.
    env = dict(os.environ)
    lib_dir = openssl_lib_dir(ROOT / "var")
    if lib_dir is not None:
        env["LD_LIBRARY_PATH"] = str(lib_dir)
    slow = subprocess.Popen(
        [*seed.command(), "--key-load-delay", "300"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        guest = make(servers, tmp_path, port=seed.port)
        assert wait_until(lambda: listening(seed.port))
        with pytest.raises(StartupError, match="still loading its data"):
            guest.start_sync(timeout=0.2)
        assert not guest.attached
        guest.start_sync(timeout=10)
        assert guest.attached
        guest.stop_sync()
        assert slow.poll() is None
    finally:
        slow.terminate()
        slow.wait(timeout=10)


def test_attaches_to_its_own_leftover_even_when_it_cannot_answer(
    tmp_path: Path, servers: list[EmbeddedRedis]
) -> None:
    owner = make(servers, tmp_path, appendonly=False)
    owner.start_sync()
    assert owner.pid is not None
    # Frozen: the kernel still accepts connections, Redis answers nothing (like a long AOF
    # replay). It is recognised as ours by its process (cwd and listening socket), not by reply.
    os.kill(owner.pid, signal.SIGSTOP)
    try:
        guest = make(servers, tmp_path, port=owner.port)
        with pytest.raises(StartupError, match="still loading its data"):
            guest.start_sync(timeout=0.3)
        assert not guest.attached
    finally:
        os.kill(owner.pid, signal.SIGCONT)
    guest.start_sync()
    assert guest.attached


async def test_early_exit_reports_the_servers_last_log_line(
    tmp_path: Path, servers: list[EmbeddedRedis]
) -> None:
    (tmp_path / "appendonlydir").mkdir()
    (tmp_path / "appendonlydir" / "appendonly.aof.manifest").write_text("garbage\n")
    server = make(servers, tmp_path)
    with pytest.raises(StartupError, match=r"exited at start \(code 1\): .*manifest.*redis\.log"):
        await server.start()
    assert not server.owned
    assert not redis_pids(tmp_path)


def _system_has_openssl_1_1() -> bool:
    try:
        ctypes.CDLL("libssl.so.1.1")
    except OSError:
        return False
    return True


@pytest.mark.skipif(_system_has_openssl_1_1(), reason="the system itself has OpenSSL 1.1")
async def test_missing_openssl_says_to_run_setup(
    tmp_path: Path, servers: list[EmbeddedRedis]
) -> None:
    empty = tmp_path / "no-openssl"
    empty.mkdir()
    server = make(servers, tmp_path / "data", lib_dir=empty)
    with pytest.raises(StartupError, match=r"libssl\.so\.1\.1.*make setup.*setup-redis-stack\.sh"):
        await server.start()
    assert not server.owned


def test_server_dies_with_its_parent_even_on_sigkill(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from app.embedded_redis import EmbeddedRedis\n"
        f"server = EmbeddedRedis(port={free_port()}, data_dir={str(tmp_path)!r})\n"
        "server.start_sync()\n"
        "print(server.pid, flush=True)\n"
        "sys.stdin.read()\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        assert redis_pids(tmp_path) == [pid]
        parent.kill()
        parent.wait(timeout=10)
        assert wait_until(lambda: not redis_pids(tmp_path)), "redis-server outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for pid in redis_pids(tmp_path):
            os.kill(pid, signal.SIGKILL)
        assert parent.stdin is not None
        parent.stdin.close()
        assert parent.stdout is not None
        parent.stdout.close()


def test_server_dir_holds_the_binaries() -> None:
    root = server_dir()
    assert (root / "bin" / "redis-server").is_file()
    assert (root / "lib" / "redisearch.so").is_file()
