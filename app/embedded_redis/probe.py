"""What listens on 127.0.0.1:port: nothing, a Redis (whose dir, which modules), or a stranger."""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path
from typing import Any

import msgspec
import redis
from redis.backoff import NoBackoff
from redis.exceptions import BusyLoadingError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

HOST = "127.0.0.1"
# Loopback connects are answered at once; a probe that waits longer is talking to something odd.
PROBE_TIMEOUT = 1.0


class Listener(msgspec.Struct, frozen=True, kw_only=True):
    """Whatever accepted a connection on the port, as far as Redis commands could tell."""

    # CONFIG GET dir; None when it did not answer as a Redis (then `error` says why).
    dir: str | None
    modules: list[str]
    error: str | None = None


def client(port: int, timeout: float) -> redis.Redis:
    """A throwaway client for probing a server: short timeouts, no retries, no handshake."""
    return redis.Redis(
        host=HOST,
        port=port,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        # A retry would hide the answer we are probing for.
        retry=Retry(NoBackoff(), 0),
        # RESP2 and no CLIENT SETINFO: one round trip per command. A server replaying its
        # AOF answers only between batches of commands, so every extra round trip counts.
        protocol=2,
        driver_info=None,
        decode_responses=True,
    )


def port_taken(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:port."""
    try:
        with socket.create_connection((HOST, port), timeout=PROBE_TIMEOUT):
            return True
    except ConnectionRefusedError:
        return False
    except OSError:
        # Not refused, not accepted (filtered, odd network setup): not ours to use.
        return True


def describe_listener(port: int) -> Listener | None:
    """None if the port is free, else what listens there."""
    if not port_taken(port):
        return None
    probe = client(port, PROBE_TIMEOUT)
    try:
        found_dir = probe.config_get("dir").get("dir")
        modules = probe.module_list()
    except RedisError as exc:
        return Listener(dir=None, modules=[], error=f"{type(exc).__name__}: {exc}")
    finally:
        probe.close()
    return Listener(dir=found_dir, modules=_module_names(modules))


def bounded(deadline: float) -> float:
    """The probe timeout, cut down to what is left before the deadline (but not to zero)."""
    return max(0.05, min(PROBE_TIMEOUT, deadline - time.monotonic()))


def is_loading(exc: RedisError) -> bool:
    """Whether a failed PING means "busy loading the data" rather than "not listening yet"."""
    # LOADING replies come only between AOF batches; a connected socket that stays silent is
    # the same server busy replaying (re-indexing HNSW per command), not a dead one.
    return isinstance(exc, (BusyLoadingError, RedisTimeoutError))


def same_dir(found: str, ours: Path) -> bool:
    """Whether a server's CONFIG GET dir is our data dir."""
    try:
        return os.path.samefile(found, ours)
    except OSError:
        return Path(found).resolve() == ours


def local_redis_on_port(port: int, data_dir: Path) -> int | None:
    """Pid of a redis-server working in data_dir and listening on HOST:port, from Linux /proc."""
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    sockets = {f"socket:[{inode}]" for inode in inodes}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # Redis rewrites its argv (process title), so match its executable and its cwd,
            # which is its --dir (Redis chdirs there).
            if not os.readlink(entry / "exe").endswith("/redis-server"):
                continue
            if Path(os.readlink(entry / "cwd")) != data_dir:
                continue
            if any(os.readlink(fd) in sockets for fd in (entry / "fd").iterdir()):
                return int(entry.name)
        except OSError:
            continue  # gone, or another user's process
    return None


def _module_names(modules: Any) -> list[str]:
    """Names from MODULE LIST (a list of dicts in both RESP2 and RESP3 with redis-py)."""
    names: list[str] = []
    for module in modules or []:
        if isinstance(module, dict):
            names.append(str(module.get("name", "")))
    return names


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on HOST:port according to /proc/net/tcp (empty off Linux)."""
    # /proc/net/tcp prints the IPv4 address as a native-endian hex integer.
    address = f"{struct.unpack('=I', socket.inet_aton(HOST))[0]:08X}:{port:04X}"
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return set()
    inodes = set()
    for line in lines:
        fields = line.split()
        if len(fields) > 9 and fields[1] == address and fields[3] == "0A":  # 0A: LISTEN
            inodes.add(fields[9])
    return inodes
