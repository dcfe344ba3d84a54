"""GroqUpstream against a real local HTTP server (FakeOpenAI) through a real aiohttp session."""

from __future__ import annotations

import logging
import math
import socket
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from app.errors import (
    UpstreamBadResponse,
    UpstreamError,
    UpstreamNotConfigured,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from app.providers.upstreams.base import Upstream
from app.providers.upstreams.groq import GroqUpstream
from tests.fakes import FakeOpenAI, Fault

pytestmark = pytest.mark.integration

KEY = "gsk_test_0123456789abcdef"
MODEL = "fake-model"
PROMPT = "What is the capital of France?"


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=KEY) as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def make_upstream(
    session: aiohttp.ClientSession,
    base_url: str,
    *,
    api_key: str | None = KEY,
    timeout: float = 5.0,
) -> GroqUpstream:
    return GroqUpstream(session, api_key=api_key, base_url=base_url, model=MODEL, timeout=timeout)


def closed_port() -> int:
    """A port nothing listens on: bound by the OS, then released."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- success -----------------------------------------------------------------------------------


async def test_success_returns_text_model_and_usage(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    upstream = make_upstream(session, fake.base_url)

    completion = await upstream.complete(PROMPT, model=MODEL, max_tokens=64, temperature=0.2)

    assert completion.text == f"answer to: {PROMPT}"
    assert completion.model == MODEL
    assert completion.prompt_tokens == len(PROMPT.split())
    assert completion.completion_tokens == len(completion.text.split())
    assert fake.calls == [
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": 64,
            "temperature": 0.2,
        }
    ]


async def test_unset_options_are_left_out_of_the_request(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    upstream = make_upstream(session, fake.base_url + "/")  # a trailing slash is tolerated

    await upstream.complete(PROMPT, model="other-model")

    assert fake.calls == [
        {"model": "other-model", "messages": [{"role": "user", "content": PROMPT}]}
    ]


async def test_custom_answer_and_missing_usage_is_estimated(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    fake.answer = lambda body: "Paris, obviously."
    fake.script([Fault.no_usage()])
    upstream = make_upstream(session, fake.base_url)

    completion = await upstream.complete(PROMPT, model=MODEL)

    assert completion.text == "Paris, obviously."
    assert completion.prompt_tokens == math.ceil(len(PROMPT) / 4)
    assert completion.completion_tokens == math.ceil(len("Paris, obviously.") / 4)


async def test_protocol_properties(session: aiohttp.ClientSession) -> None:
    upstream: Upstream = make_upstream(session, "http://127.0.0.1:9/v1")
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

    completion = await upstream.complete(PROMPT, model=MODEL)

    assert completion.text == f"answer to: {PROMPT}"
    assert fake.call_count == 2


async def test_connection_reset_then_success(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    fake.script([Fault.reset()])
    upstream = make_upstream(session, fake.base_url)

    completion = await upstream.complete(PROMPT, model=MODEL)

    assert completion.text == f"answer to: {PROMPT}"
    assert fake.call_count == 2


async def test_three_500s_give_upstream_error_after_three_calls(
    fake: FakeOpenAI, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    fake.script([Fault.status(500)] * 3)
    upstream = make_upstream(session, fake.base_url)

    with caplog.at_level(logging.DEBUG), pytest.raises(UpstreamError) as info:
        await upstream.complete(PROMPT, model=MODEL)

    assert type(info.value) is UpstreamError
    assert info.value.status_code == 502
    assert "500" in info.value.message
    assert fake.call_count == 3
    assert KEY not in caplog.text
    assert PROMPT not in caplog.text


async def test_three_429s_give_rate_limited(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    fake.script([Fault.status(429, retry_after="0")] * 3)
    upstream = make_upstream(session, fake.base_url)

    with pytest.raises(UpstreamRateLimited) as info:
        await upstream.complete(PROMPT, model=MODEL)

    assert fake.call_count == 3
    assert info.value.headers == {"Retry-After": "0"}


async def test_retry_after_beyond_the_deadline_gives_up_early_and_passes_it_on(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    fake.script([Fault.status(429, retry_after="30")])
    upstream = make_upstream(session, fake.base_url, timeout=5.0)

    started = time.monotonic()
    with pytest.raises(UpstreamRateLimited) as info:
        await upstream.complete(PROMPT, model=MODEL)

    assert time.monotonic() - started < 1.0
    assert fake.call_count == 1
    assert info.value.headers == {"Retry-After": "30"}


async def test_429_without_retry_after_has_no_header(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    fake.script([Fault.status(429)] * 3)
    upstream = make_upstream(session, fake.base_url)

    with pytest.raises(UpstreamRateLimited) as info:
        await upstream.complete(PROMPT, model=MODEL)

    assert info.value.headers == {}


async def test_stalled_provider_times_out(fake: FakeOpenAI, session: aiohttp.ClientSession) -> None:
    fake.script([Fault.timeout(5.0)])
    upstream = make_upstream(session, fake.base_url, timeout=0.5)

    started = time.monotonic()
    with pytest.raises(UpstreamTimeout) as info:
        await upstream.complete(PROMPT, model=MODEL)

    assert time.monotonic() - started < 1.5
    assert info.value.status_code == 504
    assert fake.call_count == 1


async def test_connection_refused_gives_unavailable(session: aiohttp.ClientSession) -> None:
    upstream = make_upstream(session, f"http://127.0.0.1:{closed_port()}/v1")

    with pytest.raises(UpstreamUnavailable) as info:
        await upstream.complete(PROMPT, model=MODEL)

    assert "3 attempts" in info.value.message


# -- failures that are not retried -------------------------------------------------------------


async def test_401_fails_at_once_without_leaking_the_key(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    wrong_key = "gsk_wrong_key_fedcba9876543210"
    upstream = make_upstream(session, fake.base_url, api_key=wrong_key)

    with pytest.raises(UpstreamError) as info:
        await upstream.complete(PROMPT, model=MODEL)

    assert type(info.value) is UpstreamError
    assert fake.call_count == 1
    assert "401" in info.value.message
    assert "Invalid API Key" in info.value.message
    assert wrong_key not in info.value.message
    assert PROMPT not in info.value.message


async def test_provider_message_is_redacted_and_truncated(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    echoed = f"key {KEY} cannot run prompt '{PROMPT}'\n" + "x" * 1000
    fake.script([Fault.status(400, message=echoed)])
    upstream = make_upstream(session, fake.base_url)

    with pytest.raises(UpstreamError) as info:
        await upstream.complete(PROMPT, model=MODEL)

    message = info.value.message
    assert fake.call_count == 1
    assert "400" in message
    assert KEY not in message
    assert PROMPT not in message
    assert "\n" not in message
    assert len(message) < 400


@pytest.mark.parametrize("fault", [Fault.malformed(), Fault.empty()], ids=["malformed", "empty"])
async def test_unusable_2xx_is_a_bad_response(
    fake: FakeOpenAI, session: aiohttp.ClientSession, fault: Fault
) -> None:
    fake.script([fault])
    upstream = make_upstream(session, fake.base_url)

    with pytest.raises(UpstreamBadResponse):
        await upstream.complete(PROMPT, model=MODEL)

    assert fake.call_count == 1


async def test_not_configured_makes_no_http_call(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    upstream = make_upstream(session, fake.base_url, api_key=None)

    with pytest.raises(UpstreamNotConfigured) as info:
        await upstream.complete(PROMPT, model=MODEL)

    assert upstream.configured is False
    assert info.value.status_code == 503
    assert "GROQ_API_KEY" in info.value.message
    assert fake.call_count == 0


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
