"""OpenAI's Chat Completions wire format: the request as accepted, the response as sent.

Unknown fields are refused (400) rather than dropped: a parameter we would silently ignore
could change the answer the client expects, and a cached answer must match its request.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

import msgspec

from app.api.schemas import refuse_control_characters
from app.errors import BadRequest
from app.providers.upstreams.base import ChatDelta, ChatMessage
from app.service.answers import Answer
from app.service.plan import Ask

Role = Literal["system", "developer", "user", "assistant", "tool"]
MAX_STOP_SEQUENCES = 4


class FunctionCall(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str
    arguments: str


class ToolCall(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class MessageIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A message as clients send it; content may be a string or a list of text parts."""

    role: Role
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None


class FunctionDef(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    type: Literal["function"]
    function: FunctionDef


class StreamOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    include_usage: bool = False


class ChatCompletionRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of POST /v1/chat/completions (the subset Sentinel can cache correctly)."""

    model: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    messages: Annotated[list[MessageIn], msgspec.Meta(min_length=1)]
    temperature: Annotated[float, msgspec.Meta(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] | None = None
    max_tokens: Annotated[int, msgspec.Meta(gt=0, le=1_000_000)] | None = None
    max_completion_tokens: Annotated[int, msgspec.Meta(gt=0, le=1_000_000)] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    n: int | None = None
    user: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None

    def to_ask(self) -> Ask:
        """The service's request; 400 for what is well-formed JSON but not servable."""
        if self.n not in (None, 1):
            raise BadRequest("n: only n=1 is supported", param="n")
        both = (self.max_tokens, self.max_completion_tokens)
        if None not in both and both[0] != both[1]:
            raise BadRequest(
                "max_tokens and max_completion_tokens differ; send one of them",
                param="max_completion_tokens",
            )
        if self.stream_options is not None and not self.stream:
            raise BadRequest("stream_options needs stream: true", param="stream_options")
        stop = [self.stop] if isinstance(self.stop, str) else self.stop
        if stop is not None and len(stop) > MAX_STOP_SEQUENCES:
            raise BadRequest(f"stop: at most {MAX_STOP_SEQUENCES} sequences", param="stop")
        if self.tool_choice is not None and not self.tools and self.tool_choice != "none":
            raise BadRequest("tool_choice needs tools", param="tool_choice")
        if self.response_format is not None:
            kind = self.response_format.get("type")
            if kind not in ("text", "json_object", "json_schema"):
                raise BadRequest(
                    "response_format.type must be text, json_object or json_schema",
                    param="response_format",
                )
        return Ask(
            messages=[_message(i, m) for i, m in enumerate(self.messages)],
            model=self.model,
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_tokens or self.max_completion_tokens,
            stop=stop,
            seed=self.seed,
            tools=None if self.tools is None else [msgspec.to_builtins(t) for t in self.tools],
            tool_choice=self.tool_choice,
            response_format=self.response_format,
            user=self.user,
        )


def _message(index: int, message: MessageIn) -> ChatMessage:
    """Flatten text parts; refuse parts we cannot cache or forward faithfully."""
    content = message.content
    if isinstance(content, list):
        texts = []
        for part in content:
            kind = part.get("type")
            if kind not in ("text", "refusal") or not isinstance(part.get(kind), str):
                raise BadRequest(
                    f"messages[{index}].content: only text parts are supported, got {kind!r}",
                    param=f"messages[{index}].content",
                )
            texts.append(part[kind])
        content = "".join(texts)
    refuse_control_characters(content, f"messages[{index}].content")
    if message.role == "tool" and not message.tool_call_id:
        raise BadRequest(
            f"messages[{index}]: a tool message needs tool_call_id",
            param=f"messages[{index}].tool_call_id",
        )
    if message.role == "user" and not (content or "").strip():
        raise BadRequest(
            f"messages[{index}].content: a user message needs text",
            param=f"messages[{index}].content",
        )
    return ChatMessage(
        role=message.role,
        content=content,
        name=message.name,
        tool_calls=(
            None
            if message.tool_calls is None
            else [msgspec.to_builtins(c) for c in message.tool_calls]
        ),
        tool_call_id=message.tool_call_id,
    )


def completion_id(answer: Answer) -> str:
    """`chatcmpl-` + the entry id: the same cached answer keeps the same id."""
    return f"chatcmpl-{answer.entry_id}"


def completion(answer: Answer) -> dict[str, Any]:
    """The OpenAI chat.completion object for an answer."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": answer.response if answer.response or not answer.tool_calls else None,
        "refusal": None,
    }
    if answer.tool_calls:
        message["tool_calls"] = answer.tool_calls
    usage = answer.usage
    return {
        "id": completion_id(answer),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": answer.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": answer.finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        },
        "system_fingerprint": None,
    }


class ChunkWriter:
    """Turns deltas into `chat.completion.chunk` SSE events, OpenAI's way."""

    def __init__(self, answer: Answer, *, include_usage: bool) -> None:
        self.id = completion_id(answer)
        self.model = answer.model
        self.created = int(time.time())
        self.include_usage = include_usage
        self.started = False

    def event(self, delta: ChatDelta) -> bytes:
        """Zero or more SSE events for one delta."""
        events = []
        body: dict[str, Any] = {}
        if not self.started:
            body = {"role": "assistant", "content": ""}
            self.started = True
        if delta.content:
            body["content"] = delta.content
        if delta.tool_calls:
            body["tool_calls"] = delta.tool_calls
        if body or delta.finish_reason:
            events.append(self._chunk([self._choice(body, delta.finish_reason)]))
        if delta.usage is not None and self.include_usage:
            prompt, completion_tokens = delta.usage
            events.append(
                self._chunk(
                    [],
                    usage={
                        "prompt_tokens": prompt,
                        "completion_tokens": completion_tokens,
                        "total_tokens": prompt + completion_tokens,
                    },
                )
            )
        return b"".join(events)

    def _choice(self, delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

    def _chunk(self, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": choices,
        }
        if self.include_usage:
            chunk["usage"] = usage
        return sse(chunk)


def sse(data: Any, event: str | None = None) -> bytes:
    """One server-sent event with a JSON payload."""
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + msgspec.json.encode(data) + b"\n\n"


DONE = b"data: [DONE]\n\n"
