"""What the integration tests send to Sentinel's HTTP API and check in its answers."""

from __future__ import annotations

from typing import Any

import httpx


def bearer(key: str) -> dict[str, str]:
    """The Authorization header that presents an API key (or the admin key)."""
    return {"Authorization": f"Bearer {key}"}


async def ask(
    http: httpx.AsyncClient, prompt: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    """POST /v1/query with `prompt`, whatever the answer."""
    return await http.post("/v1/query", json={"prompt": prompt}, headers=headers or {})


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """An error answer in OpenAI's shape: the status, `{"error": ...}` alone, its code and a
    message, no traceback. Returns the error object."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert error["code"] == code
    assert error["message"]
    assert "Traceback" not in response.text
    return error


async def create_key(http: httpx.AsyncClient, admin: str, **fields: Any) -> dict[str, Any]:
    """POST /v1/admin/keys with the admin key and `fields` (tenant, name, rate limit): the
    created key's record, raw key included."""
    created = await http.post("/v1/admin/keys", json=fields, headers=bearer(admin))
    assert created.status_code == 201, created.text
    record: dict[str, Any] = created.json()
    return record
