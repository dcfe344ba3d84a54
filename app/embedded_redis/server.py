"""The supervisor of the embedded Redis Stack server: start or attach, wait for PING, stop."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from pathlib import Path
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.embedded_redis import probe, process
from app.embedded_redis.install import (
    OPENSSL_LIBS,
    SETUP_HINT,
    default_var_dir,
    openssl_lib_dir,
    server_dir,
)
from app.embedded_redis.probe import HOST, PROBE_TIMEOUT, Listener
from app.errors import StartupError

logger = logging.getLogger("sentinel.embedded")

_POLL_INTERVAL = 0.02
# A lost bind race (two workers starting at once) is retried a few times before giving up.
_START_ATTEMPTS = 3


class _LostBindRace(Exception):
    """Our redis-server exited because another process bound the port after our probe."""


# Redis's default is 64 bytes, which any cached answer exceeds. 4096 covers typical answers and
# a 1024-d FLOAT32 vector; a hash with a longer value is a hashtable, as before.
HASH_MAX_LISTPACK_VALUE = 4096


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
            # An entry hash stays a compact listpack while no value (answer, FLOAT16 vector)
            # exceeds this: ~450 bytes less per entry than a hashtable (bench/knn-study.md).
            "--hash-max-listpack-value", str(HASH_MAX_LISTPACK_VALUE),
        ]  # fmt: skip
        return argv

    # --- start and stop -------------------------------------------------------------------------
    # One sync implementation of each step. The async API (the app's lifespan) runs the probes
    # and waits in a thread (loading a big AOF takes minutes), but spawns on the calling thread:
    # only there does the parent-death signal (process.py) apply.

    # The timeout is a budget, not a cancellation: on expiry we kill or escalate, then raise.
    async def start(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Start the server, or attach to ours already on the port; return once PING answers."""
        if self._process is not None or self._attached:
            return
        started = time.monotonic()
        self._data_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(_START_ATTEMPTS):
            listener = await asyncio.to_thread(probe.describe_listener, self._port)
            self._attach_or_spawn(listener)
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
            self._attach_or_spawn(probe.describe_listener(self._port))
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
        child = self._process
        if child is None:
            return
        try:
            if self._reap_exited(child):
                return
            deadline = time.monotonic() + timeout
            if not self._send_shutdown():
                child.terminate()
            if not process.wait_exit(child, deadline - timeout / 2):
                # A SHUTDOWN that never arrived (or a refused one): SIGTERM takes the same
                # graceful path inside Redis (flush the AOF, exit).
                child.terminate()
                if not process.wait_exit(child, deadline):
                    self._kill_late(timeout)
            self._log_stopped(child)
        finally:
            # Failed half-way: never leave the server running without an owner.
            self._kill()

    # --- the port's listener -----------------------------------------------------------------

    def _attach_or_spawn(self, listener: Listener | None) -> None:
        """Spawn our server on a free port, else attach to the listener (or refuse it)."""
        if listener is None:
            self._spawn()
        else:
            self._attach_checked(listener)

    def _attach_checked(self, listener: Listener) -> None:
        """Attach to a Redis serving our data dir (a crashed run's, another worker's) or refuse."""
        found_dir = listener.dir
        if found_dir is None:
            pid = probe.local_redis_on_port(self._port, self._data_dir)
            if pid is None:
                raise self._port_in_use(f"it does not answer as Redis ({listener.error})")
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
        if not probe.same_dir(found_dir, self._data_dir):
            raise self._port_in_use(f"a Redis with dir {found_dir}")
        if self._load_search and "search" not in listener.modules:
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
        self._process, self._log_offset = process.spawn(
            self.command(), cwd=self._data_dir, log_path=self.log_path, lib_dir=self._lib_dir
        )

    def _check_alive(self) -> None:
        """Raise StartupError (or _LostBindRace) if the server we started has exited."""
        child = self._process
        if child is None:
            return
        code = child.poll()
        if code is None:
            return
        self._process = None
        output = process.read_log(self.log_path, self._log_offset)
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

    def _reap_exited(self, child: subprocess.Popen[bytes]) -> bool:
        """If our server already died, say so and forget it."""
        code = child.poll()
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
        child, self._process = self._process, None
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()

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
        client = probe.client(self._port, probe.bounded(deadline))
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
                    loading = probe.is_loading(exc)
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
        client = probe.client(self._port, PROBE_TIMEOUT)
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

    def _log_stopped(self, child: subprocess.Popen[bytes]) -> None:
        """INFO line for a server we stopped."""
        logger.info(
            "embedded Redis on %s:%d stopped (dir %s, exit code %s)",
            HOST,
            self._port,
            self._data_dir,
            child.poll(),
        )
