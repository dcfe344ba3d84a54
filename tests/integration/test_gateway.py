"""The OpenAI-compatible gateway, driven by the official `openai` client over real HTTP.

One Sentinel process serves the module; three local fakes speak Groq's (OpenAI's), OpenAI's and
Anthropic's protocols. Each test asks its own questions, so tests share the cache safely (and
no test here asks for `redis_url`, which would empty it under the running Sentinel).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.openai_server import FakeOpenAI, FakeProvider, Fault, pieces
from tests.integration.conftest import SentinelProcess

pytestmark = pytest.mark.integration

GROQ_MODEL = "llama-3.1-8b-instant"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CLOCK_TOOL = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
}


def serving(make: Callable[[], FakeProvider]) -> Any:
    """A fixture for the module: the fake `make()` builds, serving until the module is done."""

    @pytest.fixture(scope="module")
    def fake() -> Iterator[FakeProvider]:
        with make() as server:
            yield server

    return fake


groq = serving(lambda: FakeOpenAI(api_key="groq-key"))
openai_fake = serving(lambda: FakeOpenAI(api_key="openai-key"))
local_llm = serving(lambda: FakeOpenAI(models=("llama3",)))  # like Ollama or vLLM: no key
anthropic = serving(lambda: FakeAnthropic(api_key="anthropic-key"))


@pytest.fixture(scope="module")
def sentinel(
    redis_stack: str,
    groq: FakeOpenAI,
    openai_fake: FakeOpenAI,
    anthropic: FakeAnthropic,
    local_llm: FakeOpenAI,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[SentinelProcess]:
    process = SentinelProcess(
        {
            "REDIS_URL": redis_stack,
            "GROQ_API_KEY": "groq-key",
            "GROQ_BASE_URL": groq.base_url,
            "OPENAI_API_KEY": "openai-key",
            "OPENAI_BASE_URL": openai_fake.base_url,
            "ANTHROPIC_API_KEY": "anthropic-key",
            "ANTHROPIC_BASE_URL": anthropic.base_url,
            "OPENAI_COMPATIBLE_BASE_URL": local_llm.base_url,
            "OPENAI_COMPATIBLE_MODEL": "llama3",
            "FALLBACKS": "groq/fallback-test=openai",
            "UPSTREAM_TIMEOUT": "5",
        },
        Path(tmp_path_factory.mktemp("gateway")) / "sentinel.log",
    )
    process.wait_ready()
    yield process
    process.stop()


@pytest.fixture(autouse=True)
def fresh_fakes(
    groq: FakeOpenAI, openai_fake: FakeOpenAI, anthropic: FakeAnthropic, local_llm: FakeOpenAI
) -> None:
    for fake in (groq, openai_fake, anthropic, local_llm):
        fake.reset()


@pytest.fixture
def client(sentinel: SentinelProcess) -> Iterator[openai.OpenAI]:
    # The drop-in: only base_url changes. The key is the client's own (Sentinel runs open).
    with openai.OpenAI(base_url=f"{sentinel.base_url}/v1", api_key="unused", max_retries=0) as c:
        yield c


def unique(text: str) -> str:
    """A question no other test asks (the cache is shared by the module)."""
    return f"{text} ({uuid.uuid4().hex[:8]})"


def create(client: openai.OpenAI, **params: Any) -> tuple[Any, httpx.Headers]:
    """A non-streamed completion and Sentinel's response headers."""
    params.setdefault("model", GROQ_MODEL)
    raw = client.chat.completions.with_raw_response.create(**params)
    return raw.parse(), raw.headers


def cache(client: openai.OpenAI, **params: Any) -> str:
    return create(client, **params)[1]["x-sentinel-cache"]


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def stream(client: openai.OpenAI, question: str, model: str = GROQ_MODEL) -> list[Any]:
    """The chunks of a streamed completion, usage asked for."""
    return list(
        client.chat.completions.create(
            model=model,
            messages=user(question),
            stream=True,
            stream_options={"include_usage": True},
        )
    )


def text_of(chunks: list[Any]) -> str:
    """The text a stream's chunks carry."""
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


# -- the drop-in ------------------------------------------------------------------------------


def test_non_streaming_miss_then_exact_hit(client: openai.OpenAI, groq: FakeOpenAI) -> None:
    question = unique("What is a semantic cache?")
    first, headers = create(client, messages=user(question))
    assert headers["x-sentinel-cache"] == "MISS"
    assert headers["x-sentinel-provider"] == "groq"
    assert first.object == "chat.completion"
    assert first.choices[0].message.role == "assistant"
    assert first.choices[0].message.content == f"answer to: {question}"
    assert first.choices[0].finish_reason == "stop"
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens
    assert groq.call_count == 1
    assert groq.calls[0]["model"] == GROQ_MODEL  # the routing prefix never reaches a provider

    again, headers = create(client, messages=user(question))
    assert headers["x-sentinel-cache"] == "HIT-EXACT"
    assert headers["x-sentinel-similarity"] == "1.000000"
    assert headers["x-sentinel-entry"] == first.id.removeprefix("chatcmpl-")
    assert again.choices[0].message.content == first.choices[0].message.content
    assert again.id == first.id
    assert groq.call_count == 1


def test_streaming_miss_is_relayed_stored_and_replayed(
    client: openai.OpenAI, groq: FakeOpenAI
) -> None:
    question = unique("Explain HNSW in one paragraph")
    chunks = stream(client, question)
    text = text_of(chunks)
    assert text == f"answer to: {question}"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0
    assert groq.calls[0]["stream"] is True

    # Stored once the stream completed: a plain request is now an exact hit.
    assert cache(client, messages=user(question)) == "HIT-EXACT"
    # A streamed hit replays the answer as chunks, usage included when asked.
    with client.chat.completions.with_streaming_response.create(
        model=GROQ_MODEL,
        messages=user(question),
        stream=True,
        stream_options={"include_usage": True},
    ) as response:
        assert response.headers["x-sentinel-cache"] == "HIT-EXACT"
        replayed = list(response.parse())
    assert text_of(replayed) == text
    assert replayed[-1].usage is not None
    assert groq.call_count == 1


def test_streaming_without_usage_sends_none(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=GROQ_MODEL, messages=user(unique("Name a prime number")), stream=True
        )
    )
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)


def test_a_broken_stream_stores_nothing(client: openai.OpenAI, groq: FakeOpenAI) -> None:
    question = unique("Tell me a long story")
    groq.script([Fault.cut(after=2)])
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(model=GROQ_MODEL, messages=user(question), stream=True))
    assert cache(client, messages=user(question)) == "MISS"  # nothing was kept
    assert groq.call_count == 2


def test_first_byte_is_not_held_back_and_a_cancelled_stream_stores_nothing(
    sentinel: SentinelProcess, client: openai.OpenAI, groq: FakeOpenAI
) -> None:
    question = unique("Describe the water cycle in many words")
    groq.chunk_delay = 0.2  # the provider takes seconds to finish its answer
    full_stream = len(pieces(f"answer to: {question}")) * groq.chunk_delay
    body = {"model": GROQ_MODEL, "messages": user(question), "stream": True}
    started = time.monotonic()
    with httpx.stream(
        "POST", f"{sentinel.base_url}/v1/chat/completions", json=body, timeout=10
    ) as response:
        assert response.headers["x-sentinel-cache"] == "MISS"
        first = next(response.iter_lines())
        first_byte = time.monotonic() - started
        # The client hangs up after the first piece.
    assert first.startswith("data: ")
    assert first_byte < full_stream / 2  # relayed as it came, not after the whole answer
    time.sleep(full_stream + 0.5)  # long after the provider would have finished
    groq.chunk_delay = 0.0
    assert cache(client, messages=user(question)) == "MISS"  # the half answer was not kept
    assert groq.call_count == 2


def test_models_lists_routable_ids(client: openai.OpenAI) -> None:
    ids = [model.id for model in client.models.list()]
    assert f"groq/{GROQ_MODEL}" in ids
    assert "openai/gpt-4o-mini" in ids
    assert "anthropic/claude-haiku-4-5" in ids


# -- scope ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"model": GROQ_MODEL}, {"model": "openai/gpt-4o-mini"}),
        (
            {"messages_prefix": [{"role": "system", "content": "Answer in French."}]},
            {"messages_prefix": [{"role": "system", "content": "Answer in German."}]},
        ),
        ({"temperature": 0.0}, {"temperature": 1.0}),
        ({"max_tokens": 50}, {"max_tokens": 60}),
        ({"tools": [WEATHER_TOOL]}, {"tools": [CLOCK_TOOL]}),
        ({"response_format": {"type": "text"}}, {"response_format": {"type": "json_object"}}),
        ({"seed": 1}, {"seed": 2}),
    ],
    ids=["model", "system", "temperature", "max_tokens", "tools", "response_format", "seed"],
)
def test_no_hits_across_scopes(
    client: openai.OpenAI, first: dict[str, Any], second: dict[str, Any]
) -> None:
    question = unique("What is the tallest mountain on Earth?")
    paraphrase = question.replace("What is", "Which is")

    def ask(params: dict[str, Any], text: str) -> str:
        params = dict(params)
        messages = [*params.pop("messages_prefix", []), *user(text)]
        return cache(client, messages=messages, **params)

    assert ask(first, question) == "MISS"
    assert ask(second, question) == "MISS"  # same words, another scope
    assert ask(second, paraphrase) == "HIT-SEMANTIC"  # semantic hits work inside a scope
    assert ask(first, question) == "HIT-EXACT"


def test_paraphrase_in_the_same_scope_is_a_semantic_hit(client: openai.OpenAI) -> None:
    suffix = uuid.uuid4().hex[:8]
    system = [{"role": "system", "content": f"You are terse. {suffix}"}]
    question = "How can I stop being so hard on myself?"
    first, _ = create(client, messages=[*system, *user(question)], temperature=0.2)
    hit, headers = create(
        client, messages=[*system, *user("How do I stop being so hard on myself?")], temperature=0.2
    )
    assert headers["x-sentinel-cache"] == "HIT-SEMANTIC"
    assert 0.8 < float(headers["x-sentinel-similarity"]) < 1.0
    assert hit.choices[0].message.content == first.choices[0].message.content


def test_follow_ups_never_cross_conversations(client: openai.OpenAI, groq: FakeOpenAI) -> None:
    tag = uuid.uuid4().hex[:8]

    def conversation(person: str) -> list[dict[str, Any]]:
        return [
            {"role": "user", "content": f"Who was {person}? {tag}"},
            {"role": "assistant", "content": f"{person} was a physicist."},
            {"role": "user", "content": "How old was he when he died?"},
        ]

    assert cache(client, messages=conversation("Albert Einstein")) == "MISS"
    assert cache(client, messages=conversation("Niels Bohr")) == "MISS"
    assert cache(client, messages=conversation("Albert Einstein")) == "HIT-EXACT"
    assert groq.call_count == 2


def test_tool_calls_are_cached_and_replayed(client: openai.OpenAI, groq: FakeOpenAI) -> None:
    question = unique("What is the weather in Paris?")
    first, headers = create(client, messages=user(question), tools=[WEATHER_TOOL])
    assert headers["x-sentinel-cache"] == "MISS"
    call = first.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert first.choices[0].finish_reason == "tool_calls"

    again, headers = create(client, messages=user(question), tools=[WEATHER_TOOL])
    assert headers["x-sentinel-cache"] == "HIT-EXACT"
    assert again.choices[0].message.tool_calls[0].model_dump() == call.model_dump()
    assert again.choices[0].finish_reason == "tool_calls"

    # Streamed hit: the tool call comes back as a tool-call delta.
    chunks = list(
        client.chat.completions.create(
            model=GROQ_MODEL, messages=user(question), tools=[WEATHER_TOOL], stream=True
        )
    )
    deltas = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].function.name == "get_weather"
    assert json.loads("".join(d.function.arguments or "" for d in deltas)) == json.loads(
        call.function.arguments
    )
    assert groq.call_count == 1


def test_a_tool_result_is_scoped_by_the_whole_conversation(
    client: openai.OpenAI, groq: FakeOpenAI
) -> None:
    question = unique("What is the weather in Oslo?")

    def after_tool(result: str) -> list[dict[str, Any]]:
        return [
            *user(question),
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": result},
        ]

    sunny, headers = create(client, messages=after_tool("sunny, 20 C"), tools=[WEATHER_TOOL])
    assert headers["x-sentinel-cache"] == "MISS"
    assert sunny.choices[0].message.content == "tool said: sunny, 20 C"
    assert cache(client, messages=after_tool("snow, -5 C"), tools=[WEATHER_TOOL]) == "MISS"
    assert cache(client, messages=after_tool("sunny, 20 C"), tools=[WEATHER_TOOL]) == "HIT-EXACT"
    assert groq.call_count == 2


# -- providers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "fake_name", "native"),
    [
        ("groq/llama-3.1-8b-instant", "groq", "llama-3.1-8b-instant"),
        ("openai/gpt-4o-mini", "openai_fake", "gpt-4o-mini"),
        ("openai_compatible/llama3", "local_llm", "llama3"),
        ("anthropic/claude-haiku-4-5", "anthropic", "claude-haiku-4-5"),
    ],
)
def test_every_provider_streamed_and_not(
    client: openai.OpenAI, request: pytest.FixtureRequest, model: str, fake_name: str, native: str
) -> None:
    fake = request.getfixturevalue(fake_name)
    question, streamed_question = unique("Name a noble gas"), unique("Name a metal")
    whole, headers = create(client, model=model, messages=user(question))
    assert headers["x-sentinel-provider"] == model.partition("/")[0]
    assert whole.choices[0].message.content == f"answer to: {question}"
    chunks = stream(client, streamed_question, model=model)
    assert text_of(chunks) == f"answer to: {streamed_question}"
    assert chunks[-1].usage is not None
    assert [call["model"] for call in fake.calls] == [native, native]
    assert cache(client, model=model, messages=user(streamed_question)) == "HIT-EXACT"
    assert fake.call_count == 2


def test_anthropic_through_the_openai_client(
    client: openai.OpenAI, anthropic: FakeAnthropic
) -> None:
    question = unique("What is the speed of light?")
    messages = [{"role": "system", "content": "Be brief."}, *user(question)]
    first, headers = create(client, model="anthropic/claude-haiku-4-5", messages=messages)
    assert headers["x-sentinel-provider"] == "anthropic"
    assert first.choices[0].message.content == f"answer to: {question}"
    assert anthropic.calls[0]["system"] == "Be brief."
    assert anthropic.calls[0]["model"] == "claude-haiku-4-5"

    other = unique("How far away is the Moon?")
    streamed = list(
        client.chat.completions.create(
            model="anthropic/claude-haiku-4-5", messages=[*messages[:1], *user(other)], stream=True
        )
    )
    assert text_of(streamed) == f"answer to: {other}"
    assert anthropic.call_count == 2
    assert anthropic.calls[1]["stream"] is True


def test_fallback_answers_and_the_scope_keeps_the_asked_model(
    client: openai.OpenAI, groq: FakeOpenAI, openai_fake: FakeOpenAI
) -> None:
    question = unique("What is the capital of Peru?")
    groq.script([Fault.status(503)] * 3)  # every attempt of the first provider fails
    first, headers = create(client, model="groq/fallback-test", messages=user(question))
    assert headers["x-sentinel-provider"] == "openai"
    assert first.choices[0].message.content == f"answer to: {question}"
    assert groq.call_count == 3
    assert openai_fake.calls[0]["model"] == "gpt-4o-mini"

    again, headers = create(client, model="groq/fallback-test", messages=user(question))
    assert headers["x-sentinel-cache"] == "HIT-EXACT"
    assert headers["x-sentinel-provider"] == "openai"
    assert again.choices[0].message.content == first.choices[0].message.content
    # The entry belongs to the model that was asked for, not the one that answered.
    assert cache(client, model="openai/gpt-4o-mini", messages=user(question)) == "MISS"


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"n": 2}, "n="),
        ({"logit_bias": {"1": 2}}, "logit_bias"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "text parts",
        ),
        ({"model": "nosuch/model"}, "unknown provider"),
        ({"temperature": 3}, "temperature"),
    ],
)
def test_unsupported_parameters_are_400_in_openai_shape(
    client: openai.OpenAI, groq: FakeOpenAI, params: dict[str, Any], fragment: str
) -> None:
    body: dict[str, Any] = {"model": GROQ_MODEL, "messages": user("hi")}
    extra = {k: v for k, v in params.items() if k not in ("model", "messages")}
    body.update({k: v for k, v in params.items() if k in ("model", "messages")})
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**body, extra_body=extra)
    error = caught.value
    assert error.status_code == 400
    assert fragment in error.message
    assert isinstance(error.body, dict)
    assert error.body["type"] == "invalid_request_error"
    assert groq.call_count == 0


def test_provider_without_a_key_is_a_clear_503(
    redis_stack: str, tmp_path: Path, groq: FakeOpenAI
) -> None:
    # redis_stack, not redis_url: emptying Redis would drop the module's Sentinel's index.
    process = SentinelProcess(
        {"REDIS_URL": redis_stack, "GROQ_API_KEY": "groq-key", "GROQ_BASE_URL": groq.base_url},
        tmp_path / "nokey.log",
    )
    try:
        process.wait_ready()
        health = httpx.get(f"{process.base_url}/health").json()
        assert health["providers"]["anthropic"] == "not_configured"
        with (
            openai.OpenAI(base_url=f"{process.base_url}/v1", api_key="x", max_retries=0) as client,
            pytest.raises(openai.APIStatusError) as caught,
        ):
            client.chat.completions.create(
                model="anthropic/claude-haiku-4-5", messages=user(unique("hello"))
            )
        assert caught.value.status_code == 503
        assert "ANTHROPIC_API_KEY" in caught.value.message
    finally:
        process.stop()


# -- /v1/query streaming ------------------------------------------------------------------------


def test_query_stream_is_simple_sse(sentinel: SentinelProcess, groq: FakeOpenAI) -> None:
    prompt = unique("Why is the sky blue?")

    def events() -> list[tuple[str, dict[str, Any]]]:
        got = []
        with httpx.stream(
            "POST", f"{sentinel.base_url}/v1/query", json={"prompt": prompt, "stream": True}
        ) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            kind = "message"
            for line in response.iter_lines():
                if line.startswith("event: "):
                    kind = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    got.append((kind, json.loads(line.removeprefix("data: "))))
                    kind = "message"
        return got

    miss = events()
    assert miss[0][0] == "meta"
    assert miss[0][1]["match"] == "miss"
    text = "".join(data["text"] for kind, data in miss if kind == "message")
    assert text == f"answer to: {prompt}"
    assert miss[-1] == ("done", {"response": text})
    hit = events()
    assert hit[0][1]["match"] == "exact"
    assert hit[-1] == ("done", {"response": text})
    assert groq.call_count == 1
