"""The floor of bench/throughput.py: a raw ASGI app on uvicorn answering every call at once.

    python -m bench.trivial_server --port 8098 [--app raw|litestar|litestar-redis --redis URL]

One worker, served with the options `python -m app` passes to uvicorn (loop and HTTP parser
left to uvicorn's "auto", as Sentinel's are: uvloop and httptools when importable), so the
difference to Sentinel is the application alone: no framework, no Redis, no JSON decoding.

`--app litestar` and `--app litestar-redis` are the steps between the floor and Sentinel
(`python -m bench.exact_hits --steps`): the same fixed answer from a one-route Litestar app that
decodes the JSON body with msgspec, then the same plus one redis-py (hiredis) HMGET of a
16-field hash per request, Sentinel's exact lookup without any of Sentinel.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import uvicorn
from litestar import Litestar, Request, post
from litestar.response import Response
from redis.asyncio import Redis

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

BODY = b'{"object":"chat.completion","choices":[{"message":{"content":"ok"}}]}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Read the request body to its end, then answer the fixed JSON (lifespan: accept)."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


KEY = "bench:trivial:entry"
FIELDS = [f"f{i}" for i in range(16)]


def litestar_app(redis_url: str | None) -> Litestar:
    """One POST route: decode the body, optionally HMGET one hash, answer BODY."""
    clients: dict[str, Redis] = {}

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        if redis_url is not None:
            client = Redis.from_url(redis_url)
            await client.hset(KEY, mapping=dict.fromkeys(FIELDS, "x" * 32))
            clients["redis"] = client
        try:
            yield
        finally:
            if clients:
                await clients["redis"].aclose()

    @post("/v1/chat/completions", status_code=200)
    async def chat(request: Request[Any, Any, Any]) -> Response[bytes]:
        msgspec.json.decode(await request.body())
        if clients:
            await clients["redis"].hmget(KEY, FIELDS)
        return Response(BODY, media_type="application/json")

    return Litestar([chat], lifespan=[lifespan], openapi_config=None)


def main() -> None:
    """Serve on 127.0.0.1 with Sentinel's uvicorn options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--app", choices=("raw", "litestar", "litestar-redis"), default="raw")
    parser.add_argument("--redis", default=None, help="the Redis URL of --app litestar-redis")
    args = parser.parse_args()
    if args.app == "litestar-redis" and not args.redis:
        parser.error("--app litestar-redis needs --redis")
    served: Any = app
    if args.app != "raw":
        served = litestar_app(args.redis if args.app == "litestar-redis" else None)
    uvicorn.run(
        served,
        host="127.0.0.1",
        port=args.port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_keep_alive=30,
        timeout_graceful_shutdown=20,
    )


if __name__ == "__main__":
    main()
