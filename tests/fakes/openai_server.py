"""A fake OpenAI-compatible provider: a real aiohttp server on 127.0.0.1 in its own thread.

    with FakeOpenAI(api_key="k") as fake:
        fake.script([Fault.status(429, retry_after="0")])
        ...  # point the client at fake.base_url
        assert fake.call_count == 2

Its own thread and event loop make it usable from sync tests, async tests (whose loop
it never blocks) and bench scripts alike. In-process it shares the GIL with the code under
test; for a benchmark that must not, run it alone:

    python tests/fakes/openai_server.py --port 8099 --delay 0.05
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self

import msgspec
from aiohttp import web

FaultKind = Literal["status", "timeout", "malformed", "empty", "reset", "no_usage"]
Answer = Callable[[dict[str, Any]], str]

_STATUS_TEXT = {
    400: "Bad request",
    401: "Invalid API Key",
    403: "Forbidden",
    404: "The model does not exist",
    422: "Unprocessable entity",
    429: "Rate limit reached, please try again later",
    500: "Internal server error",
    502: "Bad gateway",
    503: "Service unavailable",
}
_ERROR_TYPE = {401: "invalid_request_error", 429: "rate_limit_exceeded"}


@dataclass(frozen=True, slots=True)
class Fault:
    """One scripted misbehaviour, consumed by exactly one chat-completions request."""

    kind: FaultKind
    code: int = 200
    retry_after: str | None = None
    message: str | None = None
    seconds: float = 0.0

    @classmethod
    def status(
        cls, code: int, *, retry_after: str | None = None, message: str | None = None
    ) -> Fault:
        """Answer `code` with an OpenAI error body (and a Retry-After header if given)."""
        return cls("status", code=code, retry_after=retry_after, message=message)

    @classmethod
    def timeout(cls, seconds: float) -> Fault:
        """Stall `seconds` before answering normally, so a stricter client times out."""
        return cls("timeout", seconds=seconds)

    @classmethod
    def malformed(cls) -> Fault:
        """Answer 200 with a truncated JSON body."""
        return cls("malformed")

    @classmethod
    def empty(cls) -> Fault:
        """Answer 200 with a well-formed completion whose content is empty."""
        return cls("empty")

    @classmethod
    def reset(cls) -> Fault:
        """Drop the connection (TCP RST) without any HTTP response."""
        return cls("reset")

    @classmethod
    def no_usage(cls) -> Fault:
        """Answer normally but without the `usage` object, like some compatible servers."""
        return cls("no_usage")


def _error_response(
    code: int, message: str, *, headers: dict[str, str] | None = None
) -> web.Response:
    """An error in OpenAI's shape: `{"error": {"message", "type", "code"}}`."""
    body = {
        "error": {
            "message": message,
            "type": _ERROR_TYPE.get(
                code, "invalid_request_error" if code < 500 else "server_error"
            ),
            "code": None,
        }
    }
    return web.Response(
        status=code,
        body=msgspec.json.encode(body),
        content_type="application/json",
        headers=headers,
    )


def _last_user_message(body: dict[str, Any]) -> str | None:
    """The content of the last `user` message, or None if there is none."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return None
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else None
    return None


def _count_words(body: dict[str, Any]) -> int:
    """Words across every message's string content: the fake's notion of prompt tokens."""
    return sum(
        len(message["content"].split())
        for message in body["messages"]
        if isinstance(message, dict) and isinstance(message.get("content"), str)
    )


class FakeOpenAI:
    """A context-managed fake of `POST /v1/chat/completions` and `GET /v1/models`."""

    def __init__(
        self,
        *,
        delay: float = 0.0,
        api_key: str | None = None,
        answer: Answer | None = None,
        models: Iterable[str] = ("fake-model",),
        port: int = 0,
    ) -> None:
        self.delay = delay
        self.api_key = api_key
        self.answer: Answer | None = answer
        self.models = list(models)
        self._lock = threading.Lock()
        self._calls: list[dict[str, Any]] = []
        self._faults: deque[Fault] = deque()
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        # 0 lets the OS pick a free port, so parallel runs never collide.
        self._requested_port = port
        self._port: int | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        """Start the server thread and wait until it listens."""
        if self._thread is not None:
            raise RuntimeError("FakeOpenAI is already running")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="FakeOpenAI", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            asyncio.run_coroutine_threadsafe(self._serve(), loop).result(timeout=10)
        except BaseException:
            self._stop_loop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server, cancelling stalled handlers quickly, and join the thread."""
        if self._loop is None:
            return
        try:
            if self._runner is not None:
                asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(
                    timeout=10
                )
        finally:
            self._runner = None
            self._stop_loop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_get("/v1/models", self._list_models)
        # handler_cancellation: a client that gave up (timeout test) frees its stalled handler
        # at once; a short shutdown_timeout keeps teardown fast when one is still stalled.
        runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=0.2
        )
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self._requested_port, backlog=1024)
        await site.start()
        self._runner = runner
        self._port = runner.addresses[0][1]

    def _stop_loop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
        self._loop = self._thread = None
        self._port = None

    # -- what tests use ----------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port chosen by the OS."""
        if self._port is None:
            raise RuntimeError("FakeOpenAI is not running")
        return self._port

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT/v1`, what GROQ_BASE_URL would be set to."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def calls(self) -> list[dict[str, Any]]:
        """A copy of every chat-completions JSON body received, in order."""
        with self._lock:
            return list(self._calls)

    @property
    def call_count(self) -> int:
        """How many chat-completions requests arrived (rejected ones included)."""
        with self._lock:
            return len(self._calls)

    def script(self, faults: Iterable[Fault]) -> None:
        """Queue faults, one consumed per chat-completions request; normal answers resume after."""
        with self._lock:
            self._faults.extend(faults)

    def reset(self) -> None:
        """Forget recorded calls and pending faults (e.g. between benchmark phases)."""
        with self._lock:
            self._calls.clear()
            self._faults.clear()

    # -- handlers ----------------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        return self.api_key is None or request.headers.get("Authorization") == (
            f"Bearer {self.api_key}"
        )

    async def _list_models(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error_response(401, _STATUS_TEXT[401])
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.models]
        return web.json_response({"object": "list", "data": data}, dumps=_dumps)

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            body = None
        with self._lock:
            # Recorded before any check so a test can count rejected calls too.
            self._calls.append(body if isinstance(body, dict) else {})
        if self.delay > 0:
            await asyncio.sleep(self.delay)
        if not self._authorized(request):
            return _error_response(401, _STATUS_TEXT[401])
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return _error_response(400, "body must be a JSON object with a `model` string")
        prompt = _last_user_message(body)
        if prompt is None:
            return _error_response(400, "`messages` must contain a user message with text")

        # Taken only now so a rejected request does not swallow a fault meant for a real one.
        with self._lock:
            fault = self._faults.popleft() if self._faults else None
        if fault is not None:
            if fault.kind == "status":
                headers = (
                    {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
                )
                message = fault.message or _STATUS_TEXT.get(fault.code, f"HTTP {fault.code}")
                return _error_response(fault.code, message, headers=headers)
            if fault.kind == "timeout":
                await asyncio.sleep(fault.seconds)
            elif fault.kind == "malformed":
                return web.Response(
                    status=200,
                    body=b'{"id": "chatcmpl-broken", "choices": [{"mess',
                    content_type="application/json",
                )
            elif fault.kind == "reset":
                return self._reset(request)

        text = "" if fault is not None and fault.kind == "empty" else self._answer(body, prompt)
        reply: dict[str, Any] = {
            "id": f"chatcmpl-fake-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
        }
        if fault is None or fault.kind != "no_usage":
            prompt_tokens, completion_tokens = _count_words(body), len(text.split())
            reply["usage"] = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }
        return web.Response(body=msgspec.json.encode(reply), content_type="application/json")

    def _answer(self, body: dict[str, Any], prompt: str) -> str:
        answer = self.answer
        return answer(body) if answer is not None else f"answer to: {prompt}"

    @staticmethod
    def _reset(request: web.Request) -> web.StreamResponse:
        transport = request.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                # Linger 0 turns close() into a RST, like a crashed proxy, rather than a clean FIN.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        # Never sent: the connection is gone; aiohttp drops it quietly.
        return web.Response(status=204)


def _dumps(obj: Any) -> str:
    return msgspec.json.encode(obj).decode()


def main() -> None:
    """Serve the fake until interrupted (for benchmarks against a separate process)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds per request")
    parser.add_argument("--api-key", default=None, help="require `Authorization: Bearer KEY`")
    args = parser.parse_args()
    # Blocked before the server thread starts (it inherits the mask), so only sigwait sees them.
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    with FakeOpenAI(delay=args.delay, api_key=args.api_key, port=args.port) as fake:
        print(f"FakeOpenAI listening on {fake.base_url} (delay {args.delay}s)", flush=True)
        signal.sigwait(stop_signals)


if __name__ == "__main__":
    main()
