#!/usr/bin/env bash
# A private Docker engine for tests and image builds on a machine without one (CI here).
#
#   infra/dockerd.sh start    start dockerd (vfs storage) unless ours already answers
#   infra/dockerd.sh stop     stop it by its pid (containers it runs stop with it)
#   infra/dockerd.sh status   exit 0 if it answers
#   infra/dockerd.sh env      print `export DOCKER_HOST=...` for eval
#
# Everything lives under $SENTINEL_VAR/docker (default var/docker): data root, exec root,
# socket, pid file and log, so it never touches a system dockerd or /var/lib/docker. vfs is
# the storage driver that works everywhere (no overlayfs inside a VM or container); it copies
# layers, so keep images few and small. Needs root and Debian's docker.io (dockerd, containerd,
# runc); .ci/run installs them.
set -euo pipefail
# shellcheck source=infra/prelude.sh
source "$(dirname "${BASH_SOURCE[0]}")/prelude.sh" dockerd.sh

DIR="$VAR/docker"
SOCK="$DIR/docker.sock"
PIDFILE="$DIR/dockerd.pid"
LOG="$DIR/dockerd.log"
export DOCKER_HOST="unix://$SOCK"

# The daemon answers on our socket (any docker client will do: the CLI, else curl).
answers() {
    [[ -S "$SOCK" ]] || return 1
    if command -v docker >/dev/null; then
        timeout 5 docker version --format '{{.Server.Version}}' >/dev/null 2>&1
    else
        timeout 5 curl -fsS --unix-socket "$SOCK" http://docker/_ping >/dev/null 2>&1
    fi
}

our_pid() {
    local pid
    [[ -f "$PIDFILE" ]] || return 1
    pid="$(cat "$PIDFILE")"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

start() {
    if answers; then
        say "already running (pid $(our_pid || echo '?'), DOCKER_HOST=$DOCKER_HOST)"
        return 0
    fi
    command -v dockerd >/dev/null || die "dockerd not found; install Debian's docker.io (apt-get install docker.io)"
    [[ $EUID -eq 0 ]] || die "dockerd needs root"
    mkdir -p "$DIR/data" "$DIR/exec"
    rm -f "$SOCK" "$PIDFILE"
    say "starting dockerd (vfs, data root $DIR/data); log: $LOG"
    # setsid: the daemon outlives this script and ignores the caller's Ctrl-C; `stop` ends it.
    setsid dockerd \
        --storage-driver=vfs \
        --data-root "$DIR/data" \
        --exec-root "$DIR/exec" \
        --pidfile "$PIDFILE" \
        --host "$DOCKER_HOST" \
        --log-level warn \
        >>"$LOG" 2>&1 </dev/null &
    local launched=$! waited=0
    until answers; do
        if ! kill -0 "$launched" 2>/dev/null; then
            tail -n 20 "$LOG" >&2
            die "dockerd exited at start; see above and $LOG"
        fi
        ((waited++ < 300)) || die "dockerd did not answer within 30 s; see $LOG"
        sleep 0.1
    done
    say "ready in $((waited / 10)).$((waited % 10)) s: export DOCKER_HOST=$DOCKER_HOST"
}

stop() {
    local pid
    if ! pid="$(our_pid)"; then
        say "not running"
        rm -f "$PIDFILE"
        return 0
    fi
    say "stopping dockerd (pid $pid)"
    kill -TERM "$pid"
    # dockerd stops its containers (10 s each at most) and containerd before it exits.
    for _ in $(seq 1 600); do
        kill -0 "$pid" 2>/dev/null || {
            say "stopped"
            return 0
        }
        sleep 0.1
    done
    say "still running after 60 s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status)
    if answers; then
        say "running, DOCKER_HOST=$DOCKER_HOST"
    else
        say "not running"
        exit 1
    fi
    ;;
env) echo "export DOCKER_HOST=$DOCKER_HOST" ;;
*)
    echo "usage: $0 start|stop|status|env" >&2
    exit 2
    ;;
esac
