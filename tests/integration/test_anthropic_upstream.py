"""AnthropicProvider over raw HTTP against FakeAnthropic (there is no Anthropic SDK here)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from app.errors import (
    BadRequest,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamNotConfigured,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from app.providers.upstreams.anthropic import AnthropicProvider, to_messages_request
from app.providers.upstreams.base import ChatDelta, ChatMessage, ChatProvider, ChatRequest
from app.providers.upstreams.router import is_transient
from tests.fakes import Fault
from tests.fakes.anthropic_server import FakeAnthropic
from tests.integration.deltas import answer, collect, drain, text_of

pytestmark = pytest.mark.integration

KEY = "sk-ant-test-0123456789abcdef"
MODEL = "claude-test"
QUESTION = "What is the capital of France?"
IDLE = 0.3

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
    },
}
TIME_TOOL: dict[str, Any] = {"type": "function", "function": {"name": "get_time"}}


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(api_key=KEY) as server:
        yield server


def make_provider(
    session: aiohttp.ClientSession,
    base_url: str,
    *,
    api_key: str | None = KEY,
    timeout: float = 2.0,
) -> AnthropicProvider:
    return AnthropicProvider(
        session, api_key=api_key, base_url=base_url, model=MODEL, timeout=timeout, idle_timeout=IDLE
    )


def ask(text: str = QUESTION, **options: Any) -> ChatRequest:
    return ChatRequest(model="", messages=[ChatMessage(role="user", content=text)], **options)


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
    provider = make_provider(session, fake.base_url + "/")
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
    assert (result.model, result.provider) == (MODEL, "anthropic")
    assert result.prompt_tokens == 2 + 3 + 1 + 1 + len(QUESTION.split())
    assert result.completion_tokens == len(f"answer to: {QUESTION}".split())
    assert fake.calls == [
        {
            "model": MODEL,
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
    assert headers["x-api-key"] == KEY
    assert headers["anthropic-version"] == "2023-06-01"
    assert "Authorization" not in headers


@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
async def test_stop_reasons_map_to_openai_finish_reasons(
    fake: FakeAnthropic, session: aiohttp.ClientSession, stream: bool
) -> None:
    provider = make_provider(session, fake.base_url)
    fake.answer = lambda body: "one two three. four five"

    cut_by_length = await text_and_finish(provider, ask(max_tokens=2), stream=stream)
    cut_by_stop = await text_and_finish(provider, ask(stop=["."]), stream=stream)

    assert cut_by_length == ("one two ", "length")
    assert cut_by_stop == ("one two three", "stop")
    assert [c["max_tokens"] for c in fake.calls] == [2, 1024]


async def test_options_anthropic_cannot_honour_are_refused_before_any_call(
    fake: FakeAnthropic, session: aiohttp.ClientSession
) -> None:
    provider = make_provider(session, fake.base_url)

    with pytest.raises(BadRequest, match="seed"):
        await provider.chat(ask(seed=7))
    with pytest.raises(BadRequest, match="response_format"):
        await collect(provider.stream(ask(response_format={"type": "json_object"})))

    assert fake.call_count == 0


# -- streams -----------------------------------------------------------------------------------


async def test_stream_translates_events_to_deltas(
    fake: FakeAnthropic, session: aiohttp.ClientSession
) -> None:
    provider = make_provider(session, fake.base_url)

    deltas = await collect(provider.stream(ask()))

    answer_text = f"answer to: {QUESTION}"
    assert deltas[0].role == "assistant"
    assert deltas[0].model == MODEL
    assert deltas[0].provider == "anthropic"
    assert text_of(deltas) == answer_text
    assert len([d for d in deltas if d.content]) == len(answer_text.split())
    assert deltas[-1].finish_reason == "stop"
    # Input tokens come from message_start, output tokens from message_delta.
    assert deltas[-1].usage == (len(QUESTION.split()), len(answer_text.split()))
    assert fake.calls[0]["stream"] is True


async def test_stream_without_usage_ends_with_an_estimate(
    fake: FakeAnthropic, session: aiohttp.ClientSession
) -> None:
    fake.script([Fault.no_usage()])
    provider = make_provider(session, fake.base_url)

    deltas = await collect(provider.stream(ask()))

    usages = [d.usage for d in deltas if d.usage]
    assert usages[-1] == (-(-len(QUESTION) // 4), -(-len(f"answer to: {QUESTION}") // 4))


# -- tool calls --------------------------------------------------------------------------------


async def test_tool_call_round_trip(fake: FakeAnthropic, session: aiohttp.ClientSession) -> None:
    provider = make_provider(session, fake.base_url)
    question = ChatMessage(role="user", content="Tell me something")

    call = await provider.chat(
        ChatRequest(model="", messages=[question], tools=[WEATHER_TOOL], tool_choice="required")
    )

    assert call.finish_reason == "tool_calls"
    assert call.message.content == "Let me check."
    [tool_call] = call.message.tool_calls or []
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

    result = await provider.chat(
        ChatRequest(
            model="",
            messages=[
                question,
                call.message,
                ChatMessage(role="tool", content="18C and sunny", tool_call_id=tool_call["id"]),
            ],
            tools=[WEATHER_TOOL],
        )
    )

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


async def test_streamed_tool_call_assembles_like_the_whole_one(
    fake: FakeAnthropic, session: aiohttp.ClientSession
) -> None:
    provider = make_provider(session, fake.base_url)
    request = ChatRequest(
        model="",
        messages=[ChatMessage(role="user", content="What is the weather in Oslo?")],
        tools=[TIME_TOOL, WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )

    deltas = await collect(provider.stream(request))

    pieces = [piece for d in deltas for piece in d.tool_calls or ()]
    assert {piece["index"] for piece in pieces} == {0}
    assert pieces[0]["id"].startswith("toolu_fake_")
    assert pieces[0]["function"]["name"] == "get_weather"
    arguments = "".join(piece["function"]["arguments"] for piece in pieces)
    assert json.loads(arguments) == {"query": "What is the weather in Oslo?"}
    assert len(pieces) == 3  # the opening, then the JSON in two parts
    assert text_of(deltas) == "Let me check."
    assert [d.finish_reason for d in deltas if d.finish_reason] == ["tool_calls"]
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
        model=MODEL,
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
            model=MODEL,
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
        ChatRequest(model=MODEL, messages=[ChatMessage(role="tool", content="orphan")]),
        ChatRequest(model=MODEL, messages=[ChatMessage(role="narrator", content="x")]),
    ],
    ids=["tool-choice", "tool-type", "arguments", "tool-call-id", "role"],
)
def test_untranslatable_requests_are_bad_requests(request_: ChatRequest) -> None:
    with pytest.raises(BadRequest) as info:
        to_messages_request(request_, default_max_tokens=1024)
    assert info.value.status_code == 400


# -- failures ----------------------------------------------------------------------------------


async def test_overloaded_529s_are_unavailable_and_transient(
    fake: FakeAnthropic, session: aiohttp.ClientSession
) -> None:
    fake.script([Fault.status(529)] * 3)
    provider = make_provider(session, fake.base_url)

    with pytest.raises(UpstreamUnavailable) as info:
        await provider.chat(ask())

    assert "overloaded" in info.value.message
    assert "Overloaded" in info.value.message
    assert is_transient(info.value)
    assert fake.call_count == 3


@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
async def test_429_and_5xx_are_retried(
    fake: FakeAnthropic, session: aiohttp.ClientSession, stream: bool
) -> None:
    fake.script([Fault.status(429, retry_after="0"), Fault.status(500)])
    provider = make_provider(session, fake.base_url)

    await answer(provider, ask(), stream=stream)

    assert fake.call_count == 3


async def test_429_storm_is_rate_limited(
    fake: FakeAnthropic, session: aiohttp.ClientSession
) -> None:
    fake.script([Fault.status(429, retry_after="0")] * 3)
    provider = make_provider(session, fake.base_url)

    with pytest.raises(UpstreamRateLimited) as info:
        await collect(provider.stream(ask()))

    assert info.value.headers == {"Retry-After": "0"}
    assert "per-minute rate limit" in info.value.message


async def test_wrong_key_fails_at_once_without_leaking_it(
    fake: FakeAnthropic, session: aiohttp.ClientSession
) -> None:
    wrong_key = "sk-ant-wrong-fedcba9876543210"
    provider = make_provider(session, fake.base_url, api_key=wrong_key)

    with pytest.raises(UpstreamError) as info:
        await provider.chat(ask())

    assert type(info.value) is UpstreamError
    assert "HTTP 401" in info.value.message
    assert "invalid x-api-key" in info.value.message
    assert wrong_key not in info.value.message
    assert not is_transient(info.value)
    assert fake.call_count == 1


@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
@pytest.mark.parametrize("fault", [Fault.malformed(), Fault.empty()], ids=["malformed", "empty"])
async def test_unusable_answers_are_bad_responses(
    fake: FakeAnthropic, session: aiohttp.ClientSession, fault: Fault, stream: bool
) -> None:
    fake.script([fault])
    provider = make_provider(session, fake.base_url)

    with pytest.raises(UpstreamBadResponse):
        await answer(provider, ask(), stream=stream)

    assert fake.call_count == 1


async def test_stall_mid_stream_times_out_after_the_idle_timeout(
    fake: FakeAnthropic, session: aiohttp.ClientSession
) -> None:
    fake.script([Fault.stall(5.0, after=2)])
    provider = make_provider(session, fake.base_url, timeout=5.0)
    received: list[ChatDelta] = []
    started = time.monotonic()

    with pytest.raises(UpstreamTimeout, match="stalled"):
        await drain(provider.stream(ask()), received)

    assert IDLE <= time.monotonic() - started < IDLE + 1.0
    assert text_of(received) == "answer "
    assert fake.call_count == 1


@pytest.mark.parametrize(
    ("fault", "error", "fragment"),
    [
        (Fault.cut(after=2), UpstreamUnavailable, "cut"),
        (Fault.truncate(after=2), UpstreamUnavailable, "message_stop"),
        (Fault.stream_error(after=2), UpstreamUnavailable, "overloaded_error"),
        (
            Fault.stream_error(after=2, error_type="api_error", message="boom"),
            UpstreamError,
            "boom",
        ),
    ],
    ids=["cut", "truncated", "overloaded-event", "api-error-event"],
)
async def test_broken_stream_raises_after_what_it_relayed(
    fake: FakeAnthropic,
    session: aiohttp.ClientSession,
    fault: Fault,
    error: type[UpstreamError],
    fragment: str,
) -> None:
    fake.script([fault])
    provider = make_provider(session, fake.base_url)
    received: list[ChatDelta] = []

    with pytest.raises(error) as info:
        await drain(provider.stream(ask()), received)

    assert fragment in info.value.message
    assert text_of(received) == "answer "
    assert not any(d.finish_reason for d in received)
    assert fake.call_count == 1


async def test_not_configured_names_the_variable_and_calls_nothing(
    fake: FakeAnthropic, session: aiohttp.ClientSession
) -> None:
    provider = make_provider(session, fake.base_url, api_key=None)

    with pytest.raises(UpstreamNotConfigured, match="ANTHROPIC_API_KEY"):
        await provider.chat(ask())
    with pytest.raises(UpstreamNotConfigured, match="ANTHROPIC_API_KEY"):
        await collect(provider.stream(ask()))

    assert provider.configured is False
    assert KEY not in repr(make_provider(session, fake.base_url))
    assert fake.call_count == 0
