#!/bin/sh
# Entry point of the Redis Stack sidecar (docker-compose.yml): redis-server with redis.conf,
# and the memory bound from the environment when set. Kept to POSIX sh and free of variables in
# the compose file itself, because Fly's compose support passes that file through uninterpolated.
set -eu
here=/usr/local/etc/redis
set -- "$here/redis.conf"
if [ -n "${REDIS_MAXMEMORY:-}" ]; then
    set -- "$@" --maxmemory "$REDIS_MAXMEMORY"
fi
if [ -n "${REDIS_MAXMEMORY_POLICY:-}" ]; then
    set -- "$@" --maxmemory-policy "$REDIS_MAXMEMORY_POLICY"
fi
exec /opt/redis-stack/bin/redis-server "$@"
