"""Server-sent events as chat providers send them: the parser, each provider's event reader
contract, and the tally that checks a stream's end and fills in its usage."""

from __future__ import annotations

from typing import Protocol

import msgspec

from app.errors import UpstreamBadResponse
from app.providers.upstreams.base import ChatDelta, ChatRequest
from app.providers.upstreams.tokens import estimate_tokens, prompt_texts

# No chat chunk comes near this; a longer unterminated line is a server streaming garbage.
MAX_SSE_LINE_BYTES = 4 * 1024 * 1024


class SSEEvent(msgspec.Struct, frozen=True):
    """One server-sent event: its `event:` name ("message" if none) and its joined data."""

    event: str
    data: str


class SSEDecoder:
    """Incremental text/event-stream parser: feed it bytes as they come, get whole events.

    Lines end in LF or CRLF (every LLM provider's servers); a line is only decoded once
    complete, so a multi-byte character split across reads is never mangled.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._event = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """The events completed by `chunk`; raises UpstreamBadResponse on an endless line."""
        self._buffer += chunk
        events: list[SSEEvent] = []
        start = 0
        while (end := self._buffer.find(b"\n", start)) >= 0:
            line = self._buffer[start:end]
            if line.endswith(b"\r"):
                line = line[:-1]
            start = end + 1
            event = self._line(line.decode("utf-8", errors="replace"))
            if event is not None:
                events.append(event)
        del self._buffer[:start]
        if len(self._buffer) > MAX_SSE_LINE_BYTES:
            raise UpstreamBadResponse("the event stream sent a line longer than 4 MiB")
        return events

    def _line(self, line: str) -> SSEEvent | None:
        if not line:
            # A blank line dispatches the event being built; without data there is none.
            event = (
                SSEEvent(self._event or "message", "\n".join(self._data)) if self._data else None
            )
            self._event, self._data = "", []
            return event
        if line.startswith(":"):
            return None  # a comment, e.g. a keep-alive
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        return None  # `id` and `retry` mean nothing for a one-shot request


class EventReader(Protocol):
    """One provider's stream format: each event's data in, OpenAI-style deltas out."""

    @property
    def end(self) -> str:
        """What marks the stream's proper end (`[DONE]`, `message_stop`), for error messages."""
        ...

    def finished(self) -> bool:
        """Whether the stream's proper end has arrived."""
        ...

    def translate(self, data: str) -> ChatDelta | None:
        """One event's data as a delta (None if it says nothing), or an UpstreamError."""
        ...


class StreamTally:
    """What a provider's stream has said so far: enough to check its end and fill in usage."""

    def __init__(self, name: str, request: ChatRequest) -> None:
        self._name = name
        self._request = request
        self.texts: list[str] = []
        self.tool_calls = 0
        self.finish_reason: str | None = None
        self.usage: tuple[int, int] | None = None
        self._first = True

    def note(self, delta: ChatDelta) -> ChatDelta:
        """Record a delta on its way out; the first one names the provider."""
        if delta.content:
            self.texts.append(delta.content)
        if delta.tool_calls:
            self.tool_calls += len(delta.tool_calls)
        if delta.finish_reason:
            self.finish_reason = delta.finish_reason
        if delta.usage:
            self.usage = delta.usage
        if self._first:
            self._first = False
            return msgspec.structs.replace(delta, provider=self._name)
        return delta

    def ending(self) -> ChatDelta | None:
        """Check a stream that ended properly; a last delta with estimated usage if it had none."""
        if self.finish_reason is None:
            raise UpstreamBadResponse(f"{self._name} ended the stream without a finish_reason")
        if not self.tool_calls and not "".join(self.texts).strip():
            raise UpstreamBadResponse(f"{self._name} returned an empty answer")
        if self.usage is not None:
            return None
        return ChatDelta(
            usage=(
                estimate_tokens(*prompt_texts(self._request)),
                estimate_tokens(*self.texts),
            )
        )
