"""Groq's chat (an OpenAI-compatible provider named groq) against a real local HTTP server
(FakeOpenAI) through a real aiohttp session: retries, Retry-After, error mapping, timeouts,
redaction and missing usage.

What every chat provider shares (options on the wire, streams, tool calls, unusable bodies,
storms of transient errors, client errors, not-configured) is in test_chat_upstreams.py."""

from __future__ import annotations

import logging
import math
import socket
import time
from collections.abc import Iterator

import aiohttp
import pytest

from app.errors import (
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from app.providers.upstreams.base import ChatMessage, ChatProvider, ChatRequest
from app.providers.upstreams.openai_compat import OpenAICompatProvider
from tests.fakes import FakeOpenAI, Fault

pytestmark = pytest.mark.integration

KEY = "gsk_test_0123456789abcdef"
MODEL = "fake-model"
PROMPT = "What is the capital of France?"


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=KEY) as server:
        yield server


def make_upstream(
    session: aiohttp.ClientSession,
    base_url: str,
    *,
    api_key: str | None = KEY,
    timeout: float = 5.0,
) -> OpenAICompatProvider:
    return OpenAICompatProvider(
        session, name="groq", api_key=api_key, base_url=base_url, model=MODEL, timeout=timeout
    )


def closed_port() -> int:
    """A port nothing listens on: bound by the OS, then released."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def ask(text: str = PROMPT) -> ChatRequest:
    return ChatRequest(model=MODEL, messages=[ChatMessage(role="user", content=text)])


# -- success -----------------------------------------------------------------------------------


async def test_chat_without_usage_estimates_it_and_names_groq(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    fake.answer = lambda body: "Paris, obviously."
    fake.script([Fault.no_usage()])
    upstream = make_upstream(session, fake.base_url)

    result = await upstream.chat(ask())

    assert result.message == ChatMessage(role="assistant", content="Paris, obviously.")
    assert result.finish_reason == "stop"
    assert result.provider == "groq"
    assert result.prompt_tokens == math.ceil(len(PROMPT) / 4)
    assert result.completion_tokens == math.ceil(len("Paris, obviously.") / 4)


async def test_chat_provider_properties(session: aiohttp.ClientSession) -> None:
    upstream: ChatProvider = make_upstream(session, "http://127.0.0.1:9/v1")
    assert upstream.name == "groq"
    assert upstream.configured is True
    assert upstream.default_model == MODEL
    assert KEY not in repr(upstream)


# -- retried failures --------------------------------------------------------------------------


async def test_429_with_retry_after_then_success(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    fake.script([Fault.status(429, retry_after="0")])
    upstream = make_upstream(session, fake.base_url)

    result = await upstream.chat(ask())

    assert result.message.content == f"answer to: {PROMPT}"
    assert fake.call_count == 2


async def test_connection_reset_then_success(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    fake.script([Fault.reset()])
    upstream = make_upstream(session, fake.base_url)

    result = await upstream.chat(ask())

    assert result.message.content == f"answer to: {PROMPT}"
    assert fake.call_count == 2


async def test_three_500s_give_upstream_error_after_three_calls(
    fake: FakeOpenAI, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    fake.script([Fault.status(500)] * 3)
    upstream = make_upstream(session, fake.base_url)

    with caplog.at_level(logging.DEBUG), pytest.raises(UpstreamError) as info:
        await upstream.chat(ask())

    assert type(info.value) is UpstreamError
    assert info.value.status_code == 502
    assert "500" in info.value.message
    assert fake.call_count == 3
    assert KEY not in caplog.text
    assert PROMPT not in caplog.text


async def test_retry_after_beyond_the_deadline_gives_up_early_and_passes_it_on(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    fake.script([Fault.status(429, retry_after="30")])
    upstream = make_upstream(session, fake.base_url, timeout=5.0)

    started = time.monotonic()
    with pytest.raises(UpstreamRateLimited) as info:
        await upstream.chat(ask())

    assert time.monotonic() - started < 1.0
    assert fake.call_count == 1
    assert info.value.headers == {"Retry-After": "30"}


async def test_stalled_provider_times_out(fake: FakeOpenAI, session: aiohttp.ClientSession) -> None:
    fake.script([Fault.timeout(5.0)])
    upstream = make_upstream(session, fake.base_url, timeout=0.5)

    started = time.monotonic()
    with pytest.raises(UpstreamTimeout) as info:
        await upstream.chat(ask())

    assert time.monotonic() - started < 1.5
    assert info.value.status_code == 504
    assert fake.call_count == 1


async def test_connection_refused_gives_unavailable(session: aiohttp.ClientSession) -> None:
    upstream = make_upstream(session, f"http://127.0.0.1:{closed_port()}/v1")

    with pytest.raises(UpstreamUnavailable) as info:
        await upstream.chat(ask())

    assert "3 attempts" in info.value.message


# -- failures that are not retried -------------------------------------------------------------


async def test_provider_message_is_redacted_and_truncated(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    echoed = f"key {KEY} cannot run prompt '{PROMPT}'\n" + "x" * 1000
    fake.script([Fault.status(400, message=echoed)])
    upstream = make_upstream(session, fake.base_url)

    with pytest.raises(UpstreamError) as info:
        await upstream.chat(ask())

    message = info.value.message
    assert fake.call_count == 1
    assert "400" in message
    assert KEY not in message
    assert PROMPT not in message
    assert "\n" not in message
    assert len(message) < 400


# -- the fake itself ---------------------------------------------------------------------------


async def test_fake_lists_models_and_checks_the_key(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    async with session.get(
        f"{fake.base_url}/models", headers={"Authorization": f"Bearer {KEY}"}
    ) as response:
        assert response.status == 200
        assert [m["id"] for m in (await response.json())["data"]] == [MODEL]
    async with session.get(f"{fake.base_url}/models") as response:
        assert response.status == 401
        assert (await response.json())["error"]["message"] == "Invalid API Key"
