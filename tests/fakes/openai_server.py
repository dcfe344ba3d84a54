"""A fake OpenAI-compatible provider: a real aiohttp server on 127.0.0.1 in its own thread.

    with FakeOpenAI(api_key="k") as fake:
        fake.script([Fault.status(429, retry_after="0")])
        ...  # point the client at fake.base_url
        assert fake.call_count == 2

Its own thread and event loop make it usable from sync tests, async tests (whose loop
it never blocks) and bench scripts alike. In-process it shares the GIL with the code under
test; for a benchmark that must not, run it alone:

    python tests/fakes/openai_server.py --port 8099 --delay 0.05

It answers deterministically from the request: `answer to: <last user message>`, a tool call
when the request offers tools and asks for one (or its last user message holds the trigger
word), `tool said: <result>` after a tool result; with `stream: true` the same answer comes
as SSE chunks ending in `data: [DONE]`. `FakeProvider` is the machinery the fakes share.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import re
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

FaultKind = Literal[
    "status",
    "timeout",
    "malformed",
    "empty",
    "reset",
    "no_usage",
    "stall",
    "cut",
    "truncate",
    "stream_error",
]
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
    529: "Overloaded",
}
_ERROR_TYPE = {401: "invalid_request_error", 429: "rate_limit_exceeded"}
# The word that makes the fakes call a tool when the request offers tools with tool_choice auto.
TOOL_TRIGGER = "weather"


@dataclass(frozen=True, slots=True)
class Fault:
    """One scripted misbehaviour, consumed by exactly one request to the provider's endpoint.

    The stream faults (`stall`, `cut`, `truncate`, `stream_error`) strike after `after`
    pieces of a streamed answer's body; on a plain (non-stream) request `stall` acts like
    `timeout` and `cut` like `reset`.
    """

    kind: FaultKind
    code: int = 200
    retry_after: str | None = None
    message: str | None = None
    seconds: float = 0.0
    after: int = 0
    error_type: str | None = None

    @classmethod
    def status(
        cls, code: int, *, retry_after: str | None = None, message: str | None = None
    ) -> Fault:
        """Answer `code` with the provider's error body (and a Retry-After header if given)."""
        return cls("status", code=code, retry_after=retry_after, message=message)

    @classmethod
    def timeout(cls, seconds: float) -> Fault:
        """Stall `seconds` before answering normally, so a stricter client times out."""
        return cls("timeout", seconds=seconds)

    @classmethod
    def malformed(cls) -> Fault:
        """Answer 200 with a truncated JSON body (in a stream: one unreadable chunk)."""
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

    @classmethod
    def stall(cls, seconds: float, *, after: int = 1) -> Fault:
        """Go silent for `seconds` after `after` pieces of the stream, then carry on."""
        return cls("stall", seconds=seconds, after=after)

    @classmethod
    def cut(cls, *, after: int = 1) -> Fault:
        """Drop the connection (TCP RST) after `after` pieces of the stream."""
        return cls("cut", after=after)

    @classmethod
    def truncate(cls, *, after: int = 1) -> Fault:
        """End the body cleanly after `after` pieces, without the stream's proper end."""
        return cls("truncate", after=after)

    @classmethod
    def stream_error(
        cls, *, after: int = 1, error_type: str | None = None, message: str | None = None
    ) -> Fault:
        """Send the provider's in-stream error event after `after` pieces, then end."""
        return cls("stream_error", after=after, error_type=error_type, message=message)


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


def pieces(text: str) -> list[str]:
    """`text` cut into word-sized stream pieces that join back into it exactly."""
    return re.findall(r"\s*\S+\s*", text) or ([text] if text else [])


def pick_tool(tools: Any, choice: Any, prompt: str) -> str | None:
    """The tool the fake calls, in OpenAI terms (`choice` is OpenAI's tool_choice), or None."""
    if not isinstance(tools, list) or not tools or choice == "none":
        return None
    names = [
        tool["function"]["name"]
        for tool in tools
        if isinstance(tool, dict) and isinstance(tool.get("function"), dict)
    ]
    if isinstance(choice, dict):
        function = choice.get("function")
        return function.get("name") if isinstance(function, dict) else None
    if names and (choice == "required" or TOOL_TRIGGER in prompt.lower()):
        return names[0]
    return None


class FakeProvider:
    """What every fake provider shares: its server thread, call log, fault script, streams."""

    def __init__(
        self,
        *,
        delay: float = 0.0,
        api_key: str | None = None,
        answer: Answer | None = None,
        port: int = 0,
    ) -> None:
        self.delay = delay
        # Set (above `delay`): each request waits a uniform random time in [delay, delay_max].
        self.delay_max: float | None = None
        self.api_key = api_key
        self.answer: Answer | None = answer
        # Seconds between two streamed pieces; 0 sends them back to back.
        self.chunk_delay = 0.0
        self._lock = threading.Lock()
        self._calls: list[dict[str, Any]] = []
        self._headers: list[dict[str, str]] = []
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
            raise RuntimeError(f"{type(self).__name__} is already running")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name=type(self).__name__, daemon=True)
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

    def _routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def _serve(self) -> None:
        app = web.Application()
        self._routes(app)
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
            raise RuntimeError(f"{type(self).__name__} is not running")
        return self._port

    @property
    def calls(self) -> list[dict[str, Any]]:
        """A copy of every JSON body received at the provider's endpoint, in order."""
        with self._lock:
            return list(self._calls)

    @property
    def headers(self) -> list[dict[str, str]]:
        """A copy of every request's headers at the provider's endpoint, in order."""
        with self._lock:
            return list(self._headers)

    @property
    def call_count(self) -> int:
        """How many requests arrived at the provider's endpoint (rejected ones included)."""
        with self._lock:
            return len(self._calls)

    def script(self, faults: Iterable[Fault]) -> None:
        """Queue faults, one consumed per request; normal answers resume after."""
        with self._lock:
            self._faults.extend(faults)

    def reset(self) -> None:
        """Forget recorded calls and pending faults (e.g. between benchmark phases)."""
        with self._lock:
            self._calls.clear()
            self._headers.clear()
            self._faults.clear()

    # -- for the fakes -----------------------------------------------------------------------

    async def _receive(self, request: web.Request) -> dict[str, Any] | None:
        """The request's JSON object (None if not one), recorded, after the configured delay."""
        raw = await request.read()
        try:
            body = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            body = None
        with self._lock:
            # Recorded before any check so a test can count rejected calls too.
            self._calls.append(body if isinstance(body, dict) else {})
            self._headers.append(dict(request.headers))
        delay = self.delay
        if self.delay_max is not None and self.delay_max > delay:
            delay = random.uniform(delay, self.delay_max)
        if delay > 0:
            await asyncio.sleep(delay)
        return body if isinstance(body, dict) else None

    def _next_fault(self) -> Fault | None:
        # Taken only once a request is valid so a rejected one does not swallow a fault.
        with self._lock:
            return self._faults.popleft() if self._faults else None

    async def _strike_first(
        self, request: web.Request, fault: Fault | None, *, stream: bool
    ) -> web.StreamResponse | None:
        """What `fault` does before any answer: the response that replaces the answer (an error
        status, a broken body, a reset), or None once the answer may follow (after a stall)."""
        if fault is None:
            return None
        if fault.kind == "status":
            return self._status_error(fault)
        if fault.kind == "timeout" or (fault.kind == "stall" and not stream):
            await asyncio.sleep(fault.seconds)
        elif fault.kind == "malformed" and not stream:
            return web.Response(status=200, body=self._broken_body, content_type="application/json")
        elif fault.kind == "reset" or (fault.kind == "cut" and not stream):
            return self._reset(request)
        return None

    # -- each fake's protocol ------------------------------------------------------------------

    # Fault.malformed: a 200 JSON body cut short, and in a stream an event cut short.
    _broken_body = b""
    _broken_event = b""

    def _status_error(self, fault: Fault) -> web.Response:
        """Fault.status: the error response in the provider's shape."""
        raise NotImplementedError

    def _error_event(self, fault: Fault) -> bytes:
        """Fault.stream_error: the provider's in-stream error event."""
        raise NotImplementedError

    def _next_id(self) -> int:
        return next(self._ids)

    async def _play_stream(
        self,
        request: web.Request,
        *,
        head: list[bytes],
        body: list[bytes],
        tail: list[bytes],
        fault: Fault | None,
    ) -> web.StreamResponse:
        """Send an SSE answer piece by piece, striking with `fault` where it says."""
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        for piece in head:
            await response.write(piece)
        if fault is not None and fault.kind == "malformed":
            await response.write(self._broken_event)
        for index, piece in enumerate([*body, None]):
            if fault is not None and index == min(fault.after, len(body)):
                if fault.kind == "stall":
                    await asyncio.sleep(fault.seconds)
                elif fault.kind == "cut":
                    self._reset(request)
                    return response
                elif fault.kind == "truncate":
                    await response.write_eof()
                    return response
                elif fault.kind == "stream_error":
                    await response.write(self._error_event(fault))
                    await response.write_eof()
                    return response
            if piece is None:
                break
            if self.chunk_delay > 0:
                await asyncio.sleep(self.chunk_delay)
            await response.write(piece)
        for piece in tail:
            await response.write(piece)
        await response.write_eof()
        return response

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


def _sse(data: Any) -> bytes:
    return b"data: " + msgspec.json.encode(data) + b"\n\n"


class FakeOpenAI(FakeProvider):
    """A context-managed fake of `POST /v1/chat/completions` and `GET /v1/models`."""

    def __init__(self, *, models: Iterable[str] = ("fake-model",), **options: Any) -> None:
        """`models` are what GET /v1/models lists; `options` are FakeProvider's."""
        super().__init__(**options)
        self.models = list(models)

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT/v1`, what GROQ_BASE_URL would be set to."""
        return f"http://127.0.0.1:{self.port}/v1"

    def _routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_get("/v1/models", self._list_models)

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
        body = await self._receive(request)
        if not self._authorized(request):
            return _error_response(401, _STATUS_TEXT[401])
        if body is None or not isinstance(body.get("model"), str):
            return _error_response(400, "body must be a JSON object with a `model` string")
        prompt = _last_user_message(body)
        if prompt is None:
            return _error_response(400, "`messages` must contain a user message with text")

        fault = self._next_fault()
        stream = body.get("stream") is True
        struck = await self._strike_first(request, fault, stream=stream)
        if struck is not None:
            return struck

        empty = fault is not None and fault.kind == "empty"
        tool = None if empty or self._after_tool(body) else self._tool_call(body, prompt)
        text = None if tool is not None else "" if empty else self._answer(body, prompt)
        with_usage = fault is None or fault.kind != "no_usage"
        if stream:
            return await self._stream(request, body, text, tool, fault, with_usage=with_usage)

        message: dict[str, Any] = {"role": "assistant", "content": text}
        if tool is not None:
            message["tool_calls"] = [tool]
        reply: dict[str, Any] = {
            "id": f"chatcmpl-fake-{self._next_id()}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": "stop" if tool is None else "tool_calls",
                }
            ],
        }
        if with_usage:
            reply["usage"] = self._usage(body, text, tool)
        return web.Response(body=msgspec.json.encode(reply), content_type="application/json")

    async def _stream(
        self,
        request: web.Request,
        body: dict[str, Any],
        text: str | None,
        tool: dict[str, Any] | None,
        fault: Fault | None,
        *,
        with_usage: bool,
    ) -> web.StreamResponse:
        base = {
            "id": f"chatcmpl-fake-{self._next_id()}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body["model"],
        }

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return _sse({**base, "choices": [choice]})

        head = [chunk({"role": "assistant", "content": ""})]
        if tool is not None:
            arguments = tool["function"]["arguments"]
            half = len(arguments) // 2
            opening = {**tool, "index": 0, "function": {**tool["function"], "arguments": ""}}
            parts = [
                chunk({"tool_calls": [opening]}),
                *(
                    chunk({"tool_calls": [{"index": 0, "function": {"arguments": part}}]})
                    for part in (arguments[:half], arguments[half:])
                ),
            ]
        else:
            parts = [chunk({"content": piece}) for piece in pieces(text or "")]
        tail = [chunk({}, "stop" if tool is None else "tool_calls")]
        options = body.get("stream_options")
        if with_usage and isinstance(options, dict) and options.get("include_usage"):
            tail.append(_sse({**base, "choices": [], "usage": self._usage(body, text, tool)}))
        tail.append(b"data: [DONE]\n\n")
        return await self._play_stream(request, head=head, body=parts, tail=tail, fault=fault)

    _broken_body = b'{"id": "chatcmpl-broken", "choices": [{"mess'
    _broken_event = b'data: {"id": "chatcmpl-broken", "choices": [{"delt\n\n'

    def _status_error(self, fault: Fault) -> web.Response:
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
        message = fault.message or _STATUS_TEXT.get(fault.code, f"HTTP {fault.code}")
        return _error_response(fault.code, message, headers=headers)

    def _error_event(self, fault: Fault) -> bytes:
        return _sse(
            {
                "error": {
                    "message": fault.message or "The server had an error",
                    "type": fault.error_type or "server_error",
                }
            }
        )

    @staticmethod
    def _after_tool(body: dict[str, Any]) -> bool:
        messages = body["messages"]
        return (
            bool(messages) and isinstance(messages[-1], dict) and messages[-1].get("role") == "tool"
        )

    def _tool_call(self, body: dict[str, Any], prompt: str) -> dict[str, Any] | None:
        name = pick_tool(body.get("tools"), body.get("tool_choice"), prompt)
        if name is None:
            return None
        return {
            "id": f"call_fake_{self._next_id()}",
            "type": "function",
            "function": {"name": name, "arguments": _dumps({"query": prompt})},
        }

    def _answer(self, body: dict[str, Any], prompt: str) -> str:
        answer = self.answer
        if answer is not None:
            return answer(body)
        if self._after_tool(body):
            return f"tool said: {body['messages'][-1].get('content')}"
        return f"answer to: {prompt}"

    @staticmethod
    def _usage(
        body: dict[str, Any], text: str | None, tool: dict[str, Any] | None
    ) -> dict[str, int]:
        prompt_tokens = _count_words(body)
        said = tool["function"]["arguments"] if tool is not None else text or ""
        completion_tokens = len(said.split())
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }


def _dumps(obj: Any) -> str:
    return msgspec.json.encode(obj).decode()


def main() -> None:
    """Serve the fake until interrupted (for benchmarks against a separate process)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds per request")
    parser.add_argument(
        "--delay-max",
        type=float,
        default=None,
        help="with it, each request waits a uniform random time in [delay, delay-max] seconds",
    )
    parser.add_argument("--api-key", default=None, help="require `Authorization: Bearer KEY`")
    args = parser.parse_args()
    # Blocked before the server thread starts (it inherits the mask), so only sigwait sees them.
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    with FakeOpenAI(delay=args.delay, api_key=args.api_key, port=args.port) as fake:
        fake.delay_max = args.delay_max
        shown = f"{args.delay}s" if args.delay_max is None else f"{args.delay}-{args.delay_max}s"
        print(f"FakeOpenAI listening on {fake.base_url} (delay {shown})", flush=True)
        signal.sigwait(stop_signals)


if __name__ == "__main__":
    main()
