"""The chat layer over real HTTP: what every chat provider does alike (each on its local fake),
the OpenAI-compatible provider against FakeOpenAI, the SSE decoder, and the router falling back
from one local fake provider to another."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, Iterator
from typing import Any

import aiohttp
import pytest
from openai import AsyncOpenAI

from app.errors import (
    UpstreamBadResponse,
    UpstreamError,
    UpstreamNotConfigured,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from app.providers.sse import SSEDecoder, SSEEvent
from app.providers.upstreams.base import ChatDelta, ChatMessage, ChatRequest
from app.providers.upstreams.router import build_router, is_transient
from tests.fakes import FakeOpenAI, Fault
from tests.fakes.anthropic_server import FakeAnthropic
from tests.integration.chat import (
    ANTHROPIC_KEY,
    FORCED_TOOL_CALL,
    IDLE,
    OPENAI_KEY,
    OPENAI_MODEL,
    QUESTION,
    WEATHER_TOOL,
    Upstream,
    answer,
    ask,
    collect,
    drain,
    openai_provider,
    text_of,
    tool_round_trip,
)

pytestmark = pytest.mark.integration


@pytest.fixture(params=["openai", "anthropic"])
def upstream(request: pytest.FixtureRequest) -> Upstream:
    """Each chat provider in turn (groq too where a test names it), on its local fake."""
    name: str = request.param
    return Upstream.on(
        name, request.getfixturevalue("anthropic_fake" if name == "anthropic" else "fake")
    )


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=OPENAI_KEY) as server:
        yield server


@pytest.fixture
def anthropic_fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(api_key=ANTHROPIC_KEY) as server:
        yield server


def assemble_tool_calls(deltas: list[ChatDelta]) -> list[dict[str, Any]]:
    """Stream tool-call pieces joined the way an OpenAI client joins them."""
    calls: dict[int, dict[str, Any]] = {}
    for delta in deltas:
        for piece in delta.tool_calls or ():
            call = calls.setdefault(
                piece["index"], {"id": None, "type": "function", "function": {"arguments": ""}}
            )
            call["id"] = piece.get("id") or call["id"]
            function = piece.get("function", {})
            if "name" in function:
                call["function"]["name"] = function["name"]
            call["function"]["arguments"] += function.get("arguments", "")
    return [calls[index] for index in sorted(calls)]


# -- what every provider does alike ------------------------------------------------------------


async def test_stream_without_usage_ends_with_an_estimate(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    upstream.fake.script([Fault.no_usage()])

    deltas = await collect(upstream.provider(session).stream(ask()))

    said = f"answer to: {QUESTION}"
    assert [d.usage for d in deltas if d.usage] == [(-(-len(QUESTION) // 4), -(-len(said) // 4))]
    assert deltas[-1].usage is not None


@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
@pytest.mark.parametrize("fault", [Fault.malformed(), Fault.empty()], ids=["malformed", "empty"])
async def test_unusable_answers_are_bad_responses(
    upstream: Upstream, session: aiohttp.ClientSession, fault: Fault, stream: bool
) -> None:
    upstream.fake.script([fault])

    with pytest.raises(UpstreamBadResponse) as info:
        await answer(upstream.provider(session), ask(), stream=stream)

    assert not is_transient(info.value)
    assert upstream.fake.call_count == 1


async def test_stall_mid_stream_times_out_after_the_idle_timeout(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    upstream.fake.script([Fault.stall(5.0, after=2)])
    provider = upstream.provider(session, timeout=5.0)
    received: list[ChatDelta] = []
    started = time.monotonic()

    with pytest.raises(UpstreamTimeout, match="stalled"):
        await drain(provider.stream(ask()), received)

    assert IDLE <= time.monotonic() - started < IDLE + 1.0
    assert text_of(received) == upstream.relayed
    assert upstream.fake.call_count == 1  # never retried once bytes reached the caller


@pytest.mark.parametrize(
    ("upstream", "fault", "error", "fragment"),
    [
        ("openai", Fault.cut(after=2), UpstreamUnavailable, "cut"),
        ("openai", Fault.truncate(after=2), UpstreamUnavailable, "[DONE]"),
        (
            "openai",
            Fault.stream_error(after=2, message="model crashed"),
            UpstreamError,
            "model crashed",
        ),
        ("anthropic", Fault.cut(after=2), UpstreamUnavailable, "cut"),
        ("anthropic", Fault.truncate(after=2), UpstreamUnavailable, "message_stop"),
        ("anthropic", Fault.stream_error(after=2), UpstreamUnavailable, "overloaded_error"),
        (
            "anthropic",
            Fault.stream_error(after=2, error_type="api_error", message="boom"),
            UpstreamError,
            "boom",
        ),
    ],
    ids=[
        "openai-cut",
        "openai-truncated",
        "openai-error-chunk",
        "anthropic-cut",
        "anthropic-truncated",
        "anthropic-overloaded-event",
        "anthropic-api-error-event",
    ],
    indirect=["upstream"],
)
async def test_broken_stream_raises_after_what_it_relayed(
    upstream: Upstream,
    session: aiohttp.ClientSession,
    fault: Fault,
    error: type[UpstreamError],
    fragment: str,
) -> None:
    upstream.fake.script([fault])
    received: list[ChatDelta] = []

    with pytest.raises(error) as info:
        await drain(upstream.provider(session).stream(ask()), received)

    assert fragment in info.value.message
    assert text_of(received) == upstream.relayed
    assert not any(d.finish_reason for d in received)
    assert upstream.fake.call_count == 1


@pytest.mark.parametrize("upstream", ["openai", "groq", "anthropic"], indirect=True)
async def test_not_configured_names_the_variable_and_calls_nothing(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    unkeyed = upstream.provider(session, api_key=None)

    with pytest.raises(UpstreamNotConfigured, match=upstream.key_variable) as info:
        await unkeyed.chat(ask())
    with pytest.raises(UpstreamNotConfigured, match=upstream.key_variable):
        await collect(unkeyed.stream(ask()))

    assert info.value.status_code == 503
    assert unkeyed.configured is False
    assert str(upstream.fake.api_key) not in repr(upstream.provider(session))
    assert upstream.fake.call_count == 0


@pytest.mark.parametrize(
    ("upstream", "status", "stream", "error", "fragments", "headers"),
    [
        ("openai", 429, False, UpstreamRateLimited, ("HTTP 429",), {"Retry-After": "0"}),
        ("openai", 500, True, UpstreamError, ("HTTP 500",), {}),
        ("groq", 429, False, UpstreamRateLimited, ("HTTP 429",), {}),
        ("anthropic", 529, False, UpstreamUnavailable, ("overloaded", "Overloaded"), {}),
        (
            "anthropic",
            429,
            True,
            UpstreamRateLimited,
            ("per-minute rate limit",),
            {"Retry-After": "0"},
        ),
    ],
    ids=[
        "openai-429-chat",
        "openai-500-stream",
        "groq-429-without-retry-after",
        "anthropic-529-chat",
        "anthropic-429-stream",
    ],
    indirect=["upstream"],
)
async def test_a_storm_of_transient_errors_gives_up_after_three_attempts(
    upstream: Upstream,
    session: aiohttp.ClientSession,
    status: int,
    stream: bool,
    error: type[UpstreamError],
    fragments: tuple[str, ...],
    headers: dict[str, str],
) -> None:
    # The fake sends Retry-After only where the error is expected to pass one on.
    upstream.fake.script([Fault.status(status, retry_after=headers.get("Retry-After"))] * 3)

    with pytest.raises(error) as info:
        await answer(upstream.provider(session), ask(), stream=stream)

    assert type(info.value) is error
    assert all(fragment in info.value.message for fragment in fragments), info.value.message
    assert info.value.headers == headers
    assert is_transient(info.value)
    assert upstream.fake.call_count == 3


@pytest.mark.parametrize(
    ("upstream", "fault", "api_key", "stream", "error", "fragments"),
    [
        (
            "openai",
            Fault.status(400, message=f"bad request for '{QUESTION}'"),
            OPENAI_KEY,
            True,
            UpstreamRejected,
            ("HTTP 400",),
        ),
        (
            "groq",
            None,  # the fake answers 401 to a key it does not know
            "gsk_wrong_key_fedcba9876543210",
            False,
            UpstreamError,
            ("HTTP 401", "Invalid API Key"),
        ),
        (
            "anthropic",
            None,
            "sk-ant-wrong-fedcba9876543210",
            False,
            UpstreamError,
            ("HTTP 401", "invalid x-api-key"),
        ),
    ],
    ids=["openai-400", "groq-wrong-key", "anthropic-wrong-key"],
    indirect=["upstream"],
)
async def test_a_client_error_is_final_and_leaks_neither_key_nor_prompt(
    upstream: Upstream,
    session: aiohttp.ClientSession,
    fault: Fault | None,
    api_key: str,
    stream: bool,
    error: type[UpstreamError],
    fragments: tuple[str, ...],
) -> None:
    upstream.fake.script([fault] if fault else [])

    with pytest.raises(UpstreamError) as info:
        await answer(upstream.provider(session, api_key=api_key), ask(), stream=stream)

    assert type(info.value) is error
    assert all(fragment in info.value.message for fragment in fragments), info.value.message
    assert api_key not in info.value.message
    assert QUESTION not in info.value.message
    assert not is_transient(info.value)
    assert upstream.fake.call_count == 1


async def test_streamed_tool_call_assembles_like_the_whole_one(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    deltas = await collect(upstream.provider(session).stream(FORCED_TOOL_CALL))

    [call] = assemble_tool_calls(deltas)
    assert call["id"].startswith(upstream.tool_call_id)
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"query": "What is the weather in Oslo?"}
    assert [d.finish_reason for d in deltas if d.finish_reason] == ["tool_calls"]
    assert text_of(deltas) == upstream.tool_preamble


# -- whole answers -----------------------------------------------------------------------------


async def test_chat_sends_the_conversation_and_every_set_option(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    provider = openai_provider(session, fake.base_url)
    request = ChatRequest(
        model="other-model",
        messages=[
            ChatMessage(role="system", content="Be brief."),
            ChatMessage(role="user", content="Hi"),
            ChatMessage(role="assistant", content="Hello!"),
            ChatMessage(role="user", content=QUESTION, name="ana"),
        ],
        temperature=0.2,
        top_p=0.9,
        max_tokens=64,
        stop=["\n\n"],
        seed=7,
        response_format={"type": "text"},
        user="user-1",
    )

    result = await provider.chat(request)

    assert result.message == ChatMessage(role="assistant", content=f"answer to: {QUESTION}")
    assert result.finish_reason == "stop"
    assert result.model == "other-model"
    assert result.provider == "openai"
    assert result.prompt_tokens == 2 + 1 + 1 + len(QUESTION.split())
    assert result.completion_tokens == len(f"answer to: {QUESTION}".split())
    assert fake.calls == [
        {
            "model": "other-model",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": QUESTION, "name": "ana"},
            ],
            "temperature": 0.2,
            "top_p": 0.9,
            "max_tokens": 64,
            "stop": ["\n\n"],
            "seed": 7,
            "response_format": {"type": "text"},
            "user": "user-1",
        }
    ]


async def test_chat_fills_in_the_default_model_and_sends_nothing_unset(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    provider = openai_provider(session, fake.base_url + "/")

    result = await provider.chat(ask())

    assert result.model == OPENAI_MODEL
    assert fake.calls == [
        {"model": OPENAI_MODEL, "messages": [{"role": "user", "content": QUESTION}]}
    ]


# -- streams -----------------------------------------------------------------------------------


async def test_stream_relays_pieces_in_order_and_ends_with_usage(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    provider = openai_provider(session, fake.base_url)

    deltas = await collect(provider.stream(ask(temperature=0.0)))

    assert deltas[0].role == "assistant"
    assert deltas[0].provider == "openai"
    assert all(delta.provider is None for delta in deltas[1:])
    assert text_of(deltas) == f"answer to: {QUESTION}"
    assert len([d for d in deltas if d.content]) == len(f"answer to: {QUESTION}".split())
    assert [d.finish_reason for d in deltas if d.finish_reason] == ["stop"]
    assert deltas[-1].usage == (len(QUESTION.split()), len(f"answer to: {QUESTION}".split()))
    assert {d.model for d in deltas if d.model} == {OPENAI_MODEL}
    body = fake.calls[0]
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["temperature"] == 0.0


async def test_stream_keeps_multibyte_text_intact(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    answer = "Ünïcödé ☕ 東京 is fine, ça va 🙂"
    fake.answer = lambda body: answer
    provider = openai_provider(session, fake.base_url)

    deltas = await collect(provider.stream(ask()))

    assert text_of(deltas) == answer


async def test_closing_a_stream_early_frees_it(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    fake.chunk_delay = 0.2
    provider = openai_provider(session, fake.base_url, timeout=5.0)
    started = time.monotonic()

    deltas = provider.stream(ask())
    assert isinstance(deltas, AsyncGenerator)
    first = await anext(deltas)
    await deltas.aclose()
    fake.chunk_delay = 0.0
    result = await provider.chat(ask("Again?"))

    assert first.role == "assistant"
    assert result.message.content == "answer to: Again?"
    assert time.monotonic() - started < 1.0


# -- tool calls --------------------------------------------------------------------------------


async def test_tool_call_round_trip(fake: FakeOpenAI, session: aiohttp.ClientSession) -> None:
    question = "What is the weather in Paris?"

    call, tool_call, result = await tool_round_trip(
        openai_provider(session, fake.base_url), question, tool_choice="auto"
    )

    assert call.finish_reason == "tool_calls"
    assert call.message.content is None
    assert tool_call["type"] == "function"
    assert tool_call["function"]["name"] == "get_weather"
    assert json.loads(tool_call["function"]["arguments"]) == {"query": question}
    assert result.message.content == "tool said: 18C and sunny"
    assert result.finish_reason == "stop"
    sent = fake.calls[1]["messages"]
    assert sent[1] == {"role": "assistant", "content": None, "tool_calls": [tool_call]}
    assert sent[2] == {"role": "tool", "content": "18C and sunny", "tool_call_id": tool_call["id"]}
    assert fake.calls[0]["tools"] == [WEATHER_TOOL]
    assert fake.calls[0]["tool_choice"] == "auto"


async def test_the_fake_speaks_openai_to_the_official_client(fake: FakeOpenAI) -> None:
    """The fake's shapes are what the real `openai` package parses, so the tests above mean it."""
    async with AsyncOpenAI(base_url=fake.base_url, api_key=OPENAI_KEY, max_retries=0) as client:
        whole = await client.chat.completions.create(
            model=OPENAI_MODEL,
            messages=[{"role": "user", "content": "Weather in Oslo?"}],
            tools=[WEATHER_TOOL],
        )
        stream = await client.chat.completions.create(
            model=OPENAI_MODEL,
            messages=[{"role": "user", "content": QUESTION}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]

    [call] = whole.choices[0].message.tool_calls or []
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert whole.choices[0].finish_reason == "tool_calls"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == f"answer to: {QUESTION}"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == len(QUESTION.split())


# -- failures ----------------------------------------------------------------------------------


async def test_stream_retries_a_5xx_before_its_first_byte(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    fake.script([Fault.status(503), Fault.reset()])
    provider = openai_provider(session, fake.base_url)

    deltas = await collect(provider.stream(ask()))

    assert text_of(deltas) == f"answer to: {QUESTION}"
    assert fake.call_count == 3


async def test_stall_before_the_first_byte_is_bounded_by_the_deadline(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    fake.script([Fault.timeout(5.0)])
    provider = openai_provider(session, fake.base_url, timeout=0.5)
    started = time.monotonic()

    with pytest.raises(UpstreamTimeout) as info:
        await collect(provider.stream(ask()))

    assert time.monotonic() - started < 1.5
    assert is_transient(info.value)


async def test_keyless_compatible_server_is_configured_by_its_base_url(
    session: aiohttp.ClientSession,
) -> None:
    with FakeOpenAI() as keyless:
        routes = build_router(
            session,
            timeout=2.0,
            openai_compatible_base_url=keyless.base_url,
            openai_compatible_model="llama3",
        )
        unset = build_router(session, timeout=2.0)

        result = await routes.chat("openai_compatible/llama3", ask())
        with pytest.raises(UpstreamNotConfigured, match="OPENAI_COMPATIBLE_BASE_URL"):
            await unset.chat("openai_compatible/llama3", ask())

        assert result.provider == "openai_compatible"
        assert keyless.calls[0]["model"] == "llama3"
        assert keyless.call_count == 1


# -- the router over real HTTP -----------------------------------------------------------------


def groq_then_anthropic(
    session: aiohttp.ClientSession, fake: FakeOpenAI, anthropic_fake: FakeAnthropic
) -> Any:
    return build_router(
        session,
        timeout=2.0,
        idle_timeout=IDLE,
        groq_api_key=OPENAI_KEY,
        groq_base_url=fake.base_url,
        anthropic_api_key=ANTHROPIC_KEY,
        anthropic_base_url=anthropic_fake.base_url,
        anthropic_model="claude-test",
        fallbacks="groq=openai,anthropic",  # openai has no key: skipped
    )


async def test_router_falls_back_when_the_first_provider_keeps_failing(
    fake: FakeOpenAI, anthropic_fake: FakeAnthropic, session: aiohttp.ClientSession
) -> None:
    fake.script([Fault.status(503)] * 3)
    routes = groq_then_anthropic(session, fake, anthropic_fake)

    result = await routes.chat("groq/llama-3.1-8b-instant", ask())

    assert result.provider == "anthropic"
    assert result.message.content == f"answer to: {QUESTION}"
    assert fake.call_count == 3
    assert [c["model"] for c in fake.calls] == ["llama-3.1-8b-instant"] * 3
    assert [c["model"] for c in anthropic_fake.calls] == ["claude-test"]


async def test_router_stream_falls_back_before_its_first_delta(
    fake: FakeOpenAI, anthropic_fake: FakeAnthropic, session: aiohttp.ClientSession
) -> None:
    fake.script([Fault.status(429, retry_after="0")] * 3)
    routes = groq_then_anthropic(session, fake, anthropic_fake)

    deltas = await collect(routes.stream("llama-3.1-8b-instant", ask()))

    assert deltas[0].provider == "anthropic"
    assert text_of(deltas) == f"answer to: {QUESTION}"
    assert anthropic_fake.calls[0]["stream"] is True


async def test_router_stream_does_not_fall_back_once_it_has_relayed(
    fake: FakeOpenAI, anthropic_fake: FakeAnthropic, session: aiohttp.ClientSession
) -> None:
    fake.script([Fault.cut(after=2)])
    routes = groq_then_anthropic(session, fake, anthropic_fake)
    received: list[ChatDelta] = []

    with pytest.raises(UpstreamUnavailable):
        await drain(routes.stream("groq/llama-3.1-8b-instant", ask()), received)

    assert received[0].provider == "groq"
    assert anthropic_fake.call_count == 0


# -- the SSE decoder ---------------------------------------------------------------------------


def test_sse_decoder_survives_any_split() -> None:
    raw = (
        ": keep-alive\r\n\r\n"
        'data: {"text": "café ☕"}\r\n\r\n'
        "event: message_delta\n"
        "data: line one\n"
        "data:line two\n"
        "id: 7\n\n"
        "data: [DONE]\n\n"
        "data: never finished"
    ).encode()
    expected = [
        SSEEvent("message", '{"text": "café ☕"}'),
        SSEEvent("message_delta", "line one\nline two"),
        SSEEvent("message", "[DONE]"),
    ]

    whole = SSEDecoder().feed(raw)
    decoder = SSEDecoder()
    byte_by_byte = [event for i in range(len(raw)) for event in decoder.feed(raw[i : i + 1])]

    assert whole == expected
    assert byte_by_byte == expected


def test_sse_decoder_refuses_an_endless_line() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"data: " + b"x" * (2 * 1024 * 1024))

    with pytest.raises(UpstreamBadResponse, match="longer than"):
        decoder.feed(b"x" * (3 * 1024 * 1024))
