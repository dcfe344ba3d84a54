"""AnthropicProvider over raw HTTP against FakeAnthropic (there is no Anthropic SDK here).

What every chat provider does alike (usage estimates, unusable bodies, stalled and broken
streams, not-configured) is tested for it in test_chat_upstreams.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from app.errors import (
    BadRequest,
)
from app.providers.upstreams.anthropic import to_messages_request
from app.providers.upstreams.base import ChatMessage, ChatProvider, ChatRequest
from tests.fakes import Fault
from tests.fakes.anthropic_server import FakeAnthropic
from tests.integration.chat import (
    ANTHROPIC_KEY,
    ANTHROPIC_MODEL,
    FORCED_TOOL_CALL,
    QUESTION,
    WEATHER_TOOL,
    answer,
    anthropic_provider,
    ask,
    collect,
    text_of,
    tool_round_trip,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(api_key=ANTHROPIC_KEY) as server:
        yield server


async def text_and_finish(
    provider: ChatProvider, request: ChatRequest, *, stream: bool
) -> tuple[str | None, str | None]:
    """The answer's text and finish_reason, whole or streamed."""
    if stream:
        deltas = await collect(provider.stream(request))
        return text_of(deltas), next(d.finish_reason for d in deltas if d.finish_reason)
    result = await provider.chat(request)
    return result.message.content, result.finish_reason


# -- whole answers -----------------------------------------------------------------------------


async def test_chat_translates_the_request_and_the_answer(
    fake: FakeAnthropic, session: aiohttp.ClientSession
) -> None:
    provider = anthropic_provider(session, fake.base_url + "/")
    request = ChatRequest(
        model="",
        messages=[
            ChatMessage(role="system", content="Be brief."),
            ChatMessage(role="developer", content="Answer in English."),
            ChatMessage(role="user", content="Hi"),
            ChatMessage(role="assistant", content="Hello!"),
            ChatMessage(role="user", content=QUESTION),
        ],
        temperature=0.2,
        top_p=0.9,
        stop=["\n\n"],
        response_format={"type": "text"},
        user="user-1",
    )

    result = await provider.chat(request)

    assert result.message == ChatMessage(role="assistant", content=f"answer to: {QUESTION}")
    assert result.finish_reason == "stop"
    assert (result.model, result.provider) == (ANTHROPIC_MODEL, "anthropic")
    assert result.prompt_tokens == 2 + 3 + 1 + 1 + len(QUESTION.split())
    assert result.completion_tokens == len(f"answer to: {QUESTION}".split())
    assert fake.calls == [
        {
            "model": ANTHROPIC_MODEL,
            "max_tokens": 1024,
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": QUESTION},
            ],
            "system": "Be brief.\n\nAnswer in English.",
            "temperature": 0.2,
            "top_p": 0.9,
            "stop_sequences": ["\n\n"],
            "metadata": {"user_id": "user-1"},
        }
    ]
    headers = fake.headers[0]
    assert headers["x-api-key"] == ANTHROPIC_KEY
    assert headers["anthropic-version"] == "2023-06-01"
    assert "Authorization" not in headers


@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
async def test_stop_reasons_map_to_openai_finish_reasons(
    fake: FakeAnthropic, session: aiohttp.ClientSession, stream: bool
) -> None:
    provider = anthropic_provider(session, fake.base_url)
    fake.answer = lambda body: "one two three. four five"

    cut_by_length = await text_and_finish(provider, ask(max_tokens=2), stream=stream)
    cut_by_stop = await text_and_finish(provider, ask(stop=["."]), stream=stream)

    assert cut_by_length == ("one two ", "length")
    assert cut_by_stop == ("one two three", "stop")
    assert [c["max_tokens"] for c in fake.calls] == [2, 1024]


async def test_options_anthropic_cannot_honour_are_refused_before_any_call(
    fake: FakeAnthropic, session: aiohttp.ClientSession
) -> None:
    provider = anthropic_provider(session, fake.base_url)

    with pytest.raises(BadRequest, match="seed"):
        await provider.chat(ask(seed=7))
    with pytest.raises(BadRequest, match="response_format"):
        await collect(provider.stream(ask(response_format={"type": "json_object"})))

    assert fake.call_count == 0


# -- streams -----------------------------------------------------------------------------------


async def test_stream_translates_events_to_deltas(
    fake: FakeAnthropic, session: aiohttp.ClientSession
) -> None:
    provider = anthropic_provider(session, fake.base_url)

    deltas = await collect(provider.stream(ask()))

    answer_text = f"answer to: {QUESTION}"
    assert deltas[0].role == "assistant"
    assert deltas[0].model == ANTHROPIC_MODEL
    assert deltas[0].provider == "anthropic"
    assert text_of(deltas) == answer_text
    assert len([d for d in deltas if d.content]) == len(answer_text.split())
    assert deltas[-1].finish_reason == "stop"
    # Input tokens come from message_start, output tokens from message_delta.
    assert deltas[-1].usage == (len(QUESTION.split()), len(answer_text.split()))
    assert fake.calls[0]["stream"] is True


# -- tool calls --------------------------------------------------------------------------------


async def test_tool_call_round_trip(fake: FakeAnthropic, session: aiohttp.ClientSession) -> None:
    call, tool_call, result = await tool_round_trip(
        anthropic_provider(session, fake.base_url), "Tell me something", tool_choice="required"
    )

    assert call.finish_reason == "tool_calls"
    assert call.message.content == "Let me check."
    assert tool_call["id"].startswith("toolu_fake_")
    assert tool_call["type"] == "function"
    assert tool_call["function"]["name"] == "get_weather"
    assert json.loads(tool_call["function"]["arguments"]) == {"query": "Tell me something"}
    assert fake.calls[0]["tools"] == [
        {
            "name": "get_weather",
            "input_schema": WEATHER_TOOL["function"]["parameters"],
            "description": "Current weather for a city",
        }
    ]
    assert fake.calls[0]["tool_choice"] == {"type": "any"}
    assert result.message.content == "tool said: 18C and sunny"
    assert result.finish_reason == "stop"
    assert fake.calls[1]["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me check."},
                {
                    "type": "tool_use",
                    "id": tool_call["id"],
                    "name": "get_weather",
                    "input": {"query": "Tell me something"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": tool_call["id"], "content": "18C and sunny"}
            ],
        },
    ]


async def test_a_streamed_tool_use_is_its_opening_then_its_json_in_two_parts(
    fake: FakeAnthropic, session: aiohttp.ClientSession
) -> None:
    """What is sent for a named tool, and the pieces the tool_use block's events become."""
    deltas = await collect(anthropic_provider(session, fake.base_url).stream(FORCED_TOOL_CALL))

    pieces = [piece for d in deltas for piece in d.tool_calls or ()]
    assert {piece["index"] for piece in pieces} == {0}
    assert len(pieces) == 3  # the opening, then the JSON in two parts
    assert fake.calls[0]["tool_choice"] == {"type": "tool", "name": "get_weather"}
    assert fake.calls[0]["tools"][0] == {
        "name": "get_time",
        "input_schema": {"type": "object", "properties": {}},
    }


def test_parallel_tool_results_become_one_user_turn() -> None:
    calls = [
        {"id": f"call_{i}", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        for i in (1, 2)
    ]
    request = ChatRequest(
        model=ANTHROPIC_MODEL,
        messages=[
            ChatMessage(role="user", content="Do two things"),
            ChatMessage(role="assistant", content=None, tool_calls=calls),
            ChatMessage(role="tool", content="one", tool_call_id="call_1"),
            ChatMessage(role="tool", content="two", tool_call_id="call_2"),
            ChatMessage(role="user", content="Thanks, and now?"),
        ],
        max_tokens=50,
    )

    body = to_messages_request(request, default_max_tokens=1024)

    assert body["max_tokens"] == 50
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert [b["type"] for b in body["messages"][1]["content"]] == ["tool_use", "tool_use"]
    assert body["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "call_1", "content": "one"},
        {"type": "tool_result", "tool_use_id": "call_2", "content": "two"},
        {"type": "text", "text": "Thanks, and now?"},
    ]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        ("required", {"type": "any"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"type": "tool", "name": "get_weather"},
        ),
    ],
)
def test_tool_choice_mapping(choice: str | dict[str, Any], expected: dict[str, Any]) -> None:
    body = to_messages_request(ask(tools=[WEATHER_TOOL], tool_choice=choice), default_max_tokens=1)
    assert body["tool_choice"] == expected


@pytest.mark.parametrize(
    "request_",
    [
        ask(tools=[WEATHER_TOOL], tool_choice="sometimes"),
        ask(tools=[{"type": "code_interpreter"}]),
        ChatRequest(
            model=ANTHROPIC_MODEL,
            messages=[
                ChatMessage(role="user", content="x"),
                ChatMessage(
                    role="assistant",
                    content=None,
                    tool_calls=[
                        {
                            "id": "c",
                            "type": "function",
                            "function": {"name": "f", "arguments": "[1"},
                        }
                    ],
                ),
            ],
        ),
        ChatRequest(model=ANTHROPIC_MODEL, messages=[ChatMessage(role="tool", content="orphan")]),
        ChatRequest(model=ANTHROPIC_MODEL, messages=[ChatMessage(role="narrator", content="x")]),
    ],
    ids=["tool-choice", "tool-type", "arguments", "tool-call-id", "role"],
)
def test_untranslatable_requests_are_bad_requests(request_: ChatRequest) -> None:
    with pytest.raises(BadRequest) as info:
        to_messages_request(request_, default_max_tokens=1024)
    assert info.value.status_code == 400


# -- failures ----------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
async def test_429_and_5xx_are_retried(
    fake: FakeAnthropic, session: aiohttp.ClientSession, stream: bool
) -> None:
    fake.script([Fault.status(429, retry_after="0"), Fault.status(500)])
    provider = anthropic_provider(session, fake.base_url)

    await answer(provider, ask(), stream=stream)

    assert fake.call_count == 3
