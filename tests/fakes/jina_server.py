"""A local server speaking Jina's v3 embeddings protocol (POST /v1/embeddings).

It serves from a thread and event loop of its own, so a test whose loop blocks on an
in-process app (Litestar's test client handles one request at a time) is still answered.
Each request takes the next scripted `Reply`, else the standing `fault` if one is set, else
succeeds with `vector(text)` for each input (by default a deterministic random vector per
text; tests that need paraphrases to meet pass their own).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import web

DIMS = 8


def raw_vector(text: str, dims: int = DIMS) -> list[float]:
    """A deterministic, deliberately not unit-length vector for a text."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    return [float(x) for x in np.random.default_rng(seed).normal(size=dims) * 3.0]


@dataclass
class Reply:
    """A scripted answer: status, JSON body (None = Jina-shaped success), headers, delay."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    dims: int = DIMS


class FakeJina:
    """POST /v1/embeddings; answers from a script, then the standing fault, then succeeds."""

    def __init__(
        self, vector: Callable[[str, int], list[float]] = raw_vector, *, dims: int = DIMS
    ) -> None:
        self.requests: list[dict[str, Any]] = []
        self.auth: list[str | None] = []
        self.script: list[Reply] = []
        # Answered to every request (after the script) while set: an outage that lasts.
        self.fault: Reply | None = None
        self.vector = vector
        self.dims = dims
        self.base_url = ""
        self._runner: web.AppRunner | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="FakeJina", daemon=True)

    async def start(self) -> None:
        """Start the server thread and wait until it listens."""
        self._thread.start()
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._serve(), self._loop))

    async def stop(self) -> None:
        """Stop the server (stalled handlers are cancelled) and its thread."""
        cleanup = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        await asyncio.wrap_future(cleanup)
        self._loop.call_soon_threadsafe(self._loop.stop)
        await asyncio.to_thread(self._thread.join, 10)
        self._loop.close()

    async def _shutdown(self) -> None:
        """Close the server and cancel handlers still stalled on a scripted delay."""
        assert self._runner is not None
        await self._runner.cleanup()
        stalled = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in stalled:
            task.cancel()
        await asyncio.gather(*stalled, return_exceptions=True)

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/embeddings", self._handle)
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=0.1
        )
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        self.base_url = f"http://127.0.0.1:{port}/v1"

    async def _handle(self, request: web.Request) -> web.Response:
        payload = await request.json()
        self.requests.append(payload)
        self.auth.append(request.headers.get("Authorization"))
        reply = self.script.pop(0) if self.script else (self.fault or Reply(dims=self.dims))
        if reply.delay:
            await asyncio.sleep(reply.delay)
        body = reply.body
        if body is None and reply.status == 200:
            texts = payload["input"]
            # Reversed on purpose: the client must order by "index", not by position.
            body = {
                "model": payload["model"],
                "object": "list",
                "usage": {"total_tokens": 7, "prompt_tokens": 7},
                "data": [
                    {"object": "embedding", "index": i, "embedding": self.vector(t, reply.dims)}
                    for i, t in reversed(list(enumerate(texts)))
                ],
            }
        text = body if isinstance(body, str) else json.dumps(body)
        return web.Response(
            status=reply.status, text=text, content_type="application/json", headers=reply.headers
        )
