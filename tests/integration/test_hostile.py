"""Hostile input: every malformed request gets a 4xx with a clear message, never a 5xx."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable

import pytest

from app.settings import Settings
from tests.fakes.openai_server import FakeOpenAI
from tests.integration.conftest import SentinelProcess, app_client

pytestmark = pytest.mark.integration

JSON = {"content-type": "application/json"}
CHAT = "/v1/chat/completions"


def deep(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "fragment"),
    [
        ("/v1/query", b'{"prompt": "hi", "model": ' + deep(100_000) + b"}", JSON, 400, "deeply"),
        (
            CHAT,
            b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], '
            b'"response_format": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5000 + b"}",
            JSON,
            400,
            "deeply",
        ),
        ("/v1/query", b'{"prompt": "hi"}', {"content-type": "text/plain"}, 415, "application/json"),
        (
            "/v1/query",
            b"prompt=hi",
            {"content-type": "application/x-www-form-urlencoded"},
            415,
            "application/json",
        ),
        ("/v1/query", b'{"prompt": "hi \xff\xfe"}', JSON, 400, "UTF-8"),
        ("/v1/query", json.dumps({"prompt": "hi\u0000there"}).encode(), JSON, 400, "U+0000"),
        (
            CHAT,
            json.dumps(
                {"model": "m", "messages": [{"role": "user", "content": "a\u001bb"}]}
            ).encode(),
            JSON,
            400,
            "U+001B",
        ),
        ("/v1/query", json.dumps({"prompt": " \n\t "}).encode(), JSON, 400, "whitespace"),
        ("/v1/query", b'{"prompt": "hi", "max_tokens": 100000000000}', JSON, 400, "max_tokens"),
        ("/v1/query", b'{"prompt": "hi", "ttl": -1}', JSON, 400, "ttl"),
        ("/v1/query", b'{"prompt": "hi", "similarity_threshold": NaN}', JSON, 400, "malformed"),
        (
            "/v1/query",
            b'{"prompt": "hi", "similarity_threshold": 1e999}',
            JSON,
            400,
            "out of range",
        ),
        ("/v1/query", b"[]", JSON, 400, "object"),
        ("/v1/query", b"", JSON, 400, "empty"),
        ("/v1/query", b'{"prompt": 5}', JSON, 400, "prompt"),
        ("/v1/query", b'{"prompt": "hi", "extra": 1}', JSON, 400, "extra"),
        ("/v1/query", b'{"prompt": "' + b"a" * (2 * 1024 * 1024) + b'"}', JSON, 413, "1 MiB"),
        (CHAT, b'{"model": "m", "messages": []}', JSON, 400, "messages"),
        (CHAT, b'{"model": "m", "messages": [{"role": "wizard", "content": "x"}]}', JSON, 400, ""),
    ],
    ids=[
        "deep-array",
        "deep-object",
        "text-plain",
        "form",
        "invalid-utf8",
        "nul",
        "escape-in-chat",
        "whitespace-prompt",
        "huge-max-tokens",
        "negative-ttl",
        "nan",
        "infinite-threshold",
        "array-body",
        "empty-body",
        "wrong-type",
        "unknown-field",
        "oversized",
        "no-messages",
        "unknown-role",
    ],
)
async def test_hostile_requests_get_a_clear_4xx(
    make_settings: Callable[..., Settings],
    fake_llm: FakeOpenAI,
    path: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
    fragment: str,
) -> None:
    async with app_client(make_settings()) as http:
        response = await http.post(path, content=body, headers=headers)
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert fragment in error["message"]
        assert error["code"]
        assert "Traceback" not in response.text
        # The service is still fine afterwards.
        assert (await http.post("/v1/query", json={"prompt": "still alive?"})).status_code == 200
    assert fake_llm.call_count == 1  # only the last, valid request reached the provider


def test_oversized_body_is_refused_before_it_is_read(
    start_on: Callable[..., SentinelProcess], redis_url: str, fake_llm: FakeOpenAI
) -> None:
    sentinel = start_on(redis_url)
    sentinel.wait_ready()
    with socket.create_connection(("127.0.0.1", sentinel.port), timeout=10) as sock:
        # Announce 100 MB, send only the first kilobyte, and never the rest.
        sock.sendall(
            b"POST /v1/query HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000000\r\n\r\n" + b'{"prompt": "' + b"a" * 1000
        )
        started = time.monotonic()
        reply = sock.recv(65536)
        assert time.monotonic() - started < 5  # answered without waiting for 100 MB
    assert reply.startswith(b"HTTP/1.1 413")
    assert fake_llm.call_count == 0
