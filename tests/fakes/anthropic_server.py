"""A fake Anthropic Messages API: `POST /v1/messages`, whole or streamed, on 127.0.0.1.

    with FakeAnthropic(api_key="k") as fake:
        fake.script([Fault.status(529)])
        ...  # point the client at fake.base_url
        assert fake.calls[0]["system"] == "Be brief."

It checks what the real API rejects (missing `max_tokens` or `anthropic-version`, a role
other than user/assistant, a `tool_result` without its `tool_use`) and answers like
FakeOpenAI: `answer to: <last user text>`, a `tool_use` block when tools are offered and
asked for (or the trigger word appears), `tool said: <result>` after a tool result. It honours
`max_tokens` (in words) and `stop_sequences`. Faults are the same `Fault`s as FakeOpenAI's,
sent in Anthropic's error shape and SSE event format.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from tests.fakes.openai_server import FakeProvider, Fault, pick_tool, pieces

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
_MESSAGES = {
    401: "invalid x-api-key",
    429: "Number of request tokens has exceeded your per-minute rate limit",
    500: "Internal server error",
    529: "Overloaded",
}
_STOP_REASONS = {"text": "end_turn", "tool": "tool_use"}


def _error(
    code: int, message: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    """An error in Anthropic's shape: `{"type": "error", "error": {"type", "message"}}`."""
    error_type = _ERROR_TYPES.get(code, "api_error" if code >= 500 else "invalid_request_error")
    body = {
        "type": "error",
        "error": {"type": error_type, "message": message or _MESSAGES.get(code, error_type)},
    }
    return web.Response(
        status=code,
        body=msgspec.json.encode(body),
        content_type="application/json",
        headers={"request-id": "req_fake", **(headers or {})},
    )


def _event(data: dict[str, Any]) -> bytes:
    return f"event: {data['type']}\ndata: ".encode() + msgspec.json.encode(data) + b"\n\n"


def _text_of(content: Any) -> str:
    """The text of a message's content: a string, or its text blocks joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            block.get("text", "")
            for block in content
            if isinstance(block, dict) and block.get("type") == "text"
        )
    return ""


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, list):
        return [block for block in content if isinstance(block, dict)]
    return [{"type": "text", "text": content}] if isinstance(content, str) else []


def _problem(body: dict[str, Any]) -> str | None:
    """Why the real API would answer 400, or None."""
    if not isinstance(body.get("model"), str):
        return "model: Field required"
    if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1:
        return "max_tokens: Field required"
    system = body.get("system")
    if system is not None and not isinstance(system, str | list):
        return "system: Input should be a valid string or list"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    tool_uses: set[str] = set()
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in {"user", "assistant"}:
            return f'messages.{index}.role: Input should be "user" or "assistant"'
        blocks = _blocks(message.get("content"))
        if not blocks:
            return f"messages.{index}: content must not be empty"
        for block in blocks:
            if block.get("type") == "text" and not block.get("text"):
                return f"messages.{index}: text content blocks must be non-empty"
            if block.get("type") == "tool_use":
                tool_uses.add(block.get("id", ""))
            if block.get("type") == "tool_result" and block.get("tool_use_id") not in tool_uses:
                return f"messages.{index}: tool_result has no matching tool_use block"
    if messages[0].get("role") != "user":
        return "messages: the first message must use the user role"
    return None


class FakeAnthropic(FakeProvider):
    """A context-managed fake of Anthropic's `POST /v1/messages`."""

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT`, what ANTHROPIC_BASE_URL would be set to."""
        return f"http://127.0.0.1:{self.port}"

    def _routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/messages", self._messages)

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body = await self._receive(request)
        if self.api_key is not None and request.headers.get("x-api-key") != self.api_key:
            return _error(401)
        if not request.headers.get("anthropic-version"):
            return _error(400, "anthropic-version: header is required")
        if body is None:
            return _error(400, "body must be a JSON object")
        problem = _problem(body)
        if problem is not None:
            return _error(400, problem)

        fault = self._next_fault()
        stream = body.get("stream") is True
        struck = await self._strike_first(request, fault, stream=stream)
        if struck is not None:
            return struck

        content, stop_reason, stop_sequence = self._reply(
            body, empty=fault is not None and fault.kind == "empty"
        )
        usage = {
            "input_tokens": self._input_tokens(body),
            "output_tokens": sum(
                len((block.get("text") or msgspec.json.encode(block.get("input")).decode()).split())
                for block in content
            ),
        }
        with_usage = fault is None or fault.kind != "no_usage"
        message: dict[str, Any] = {
            "id": f"msg_fake_{self._next_id()}",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
        }
        if with_usage:
            message["usage"] = usage
        if stream:
            return await self._stream(request, message, usage, fault)
        return web.Response(body=msgspec.json.encode(message), content_type="application/json")

    def _reply(
        self, body: dict[str, Any], *, empty: bool
    ) -> tuple[list[dict[str, Any]], str, str | None]:
        """The content blocks, stop_reason and stop_sequence of the answer."""
        if empty:
            return [], "end_turn", None
        last = body["messages"][-1]
        results = [b for b in _blocks(last.get("content")) if b.get("type") == "tool_result"]
        prompt = _text_of(last.get("content"))
        if not results:
            choice = body.get("tool_choice") or {"type": "auto"}
            name = pick_tool(
                [{"function": tool} for tool in body.get("tools") or []],
                {
                    "auto": "auto",
                    "any": "required",
                    "none": "none",
                    "tool": {"function": {"name": choice.get("name")}},
                }.get(choice.get("type")),
                prompt,
            )
            if name is not None:
                tool_use = {
                    "type": "tool_use",
                    "id": f"toolu_fake_{self._next_id()}",
                    "name": name,
                    "input": {"query": prompt},
                }
                return [{"type": "text", "text": "Let me check."}, tool_use], "tool_use", None
        if self.answer is not None:
            text = self.answer(body)
        elif results:
            text = f"tool said: {_text_of(results[-1].get('content'))}"
        else:
            text = f"answer to: {prompt}"
        stop_reason, stop_sequence = "end_turn", None
        for sequence in body.get("stop_sequences") or []:
            if sequence in text:
                text, stop_reason, stop_sequence = (
                    text.split(sequence)[0],
                    "stop_sequence",
                    sequence,
                )
        words = pieces(text)
        if len(words) > body["max_tokens"]:
            text, stop_reason = "".join(words[: body["max_tokens"]]), "max_tokens"
        return [{"type": "text", "text": text}], stop_reason, stop_sequence

    @staticmethod
    def _input_tokens(body: dict[str, Any]) -> int:
        words = len(_text_of(body.get("system")).split()) if body.get("system") else 0
        for message in body["messages"]:
            for block in _blocks(message.get("content")):
                words += len(str(block.get("text") or block.get("content") or "").split())
        return words

    async def _stream(
        self,
        request: web.Request,
        message: dict[str, Any],
        usage: dict[str, int],
        fault: Fault | None,
    ) -> web.StreamResponse:
        start = {**message, "content": [], "stop_reason": None, "stop_sequence": None}
        if "usage" in message:
            start["usage"] = {"input_tokens": usage["input_tokens"], "output_tokens": 1}
        head = [_event({"type": "message_start", "message": start}), _event({"type": "ping"})]
        body: list[bytes] = []
        for index, block in enumerate(message["content"]):
            if block["type"] == "text":
                opening = {"type": "text", "text": ""}
                deltas = [{"type": "text_delta", "text": piece} for piece in pieces(block["text"])]
            else:
                opening = {**block, "input": {}}
                arguments = msgspec.json.encode(block["input"]).decode()
                half = len(arguments) // 2
                deltas = [
                    {"type": "input_json_delta", "partial_json": part}
                    for part in (arguments[:half], arguments[half:])
                ]
            body.append(
                _event({"type": "content_block_start", "index": index, "content_block": opening})
            )
            body.extend(
                _event({"type": "content_block_delta", "index": index, "delta": delta})
                for delta in deltas
            )
            body.append(_event({"type": "content_block_stop", "index": index}))
        end: dict[str, Any] = {
            "type": "message_delta",
            "delta": {
                "stop_reason": message["stop_reason"],
                "stop_sequence": message["stop_sequence"],
            },
        }
        if "usage" in message:
            end["usage"] = {"output_tokens": usage["output_tokens"]}
        tail = [_event(end), _event({"type": "message_stop"})]
        return await self._play_stream(request, head=head, body=body, tail=tail, fault=fault)

    _broken_body = b'{"id": "msg_broken", "content": [{"ty'
    _broken_event = b'event: content_block_delta\ndata: {"type": "content_block_del\n\n'

    def _status_error(self, fault: Fault) -> web.Response:
        retry = {"retry-after": fault.retry_after} if fault.retry_after is not None else None
        return _error(fault.code, fault.message, retry)

    def _error_event(self, fault: Fault) -> bytes:
        error_type = fault.error_type or "overloaded_error"
        return _event(
            {
                "type": "error",
                "error": {"type": error_type, "message": fault.message or "Overloaded"},
            }
        )
