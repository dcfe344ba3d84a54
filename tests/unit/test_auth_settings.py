"""SENTINEL_API_KEYS parsing, the auth settings and how a request presents its key."""

from __future__ import annotations

from typing import Any

import pytest
from litestar.connection import ASGIConnection
from litestar.handlers import HTTPRouteHandler

from app.api.auth import authenticate, credential
from app.main import create_app
from app.settings import SettingsError, load_settings, parse_api_keys


def test_pairs_are_parsed_with_whitespace_and_empty_items_ignored() -> None:
    assert parse_api_keys(" k1 = team-a , k2=team.b:eu,, ") == {"k1": "team-a", "k2": "team.b:eu"}
    assert parse_api_keys("") == {}


def test_a_key_may_hold_equals_signs() -> None:
    # base64 padding: the tenant is what follows the last "="
    assert parse_api_keys("abc==def==" + "=team") == {"abc==def==": "team"}


def test_the_same_pair_twice_is_fine() -> None:
    assert parse_api_keys("k=a,k=a") == {"k": "a"}


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("secret-key", "pair 1 is not `key=tenant`"),
        ("k1=a,=b", "pair 2 is not `key=tenant`"),
        ("k1=", "pair 1: the tenant"),
        ("k1=team a", "pair 1: the tenant"),
        ("k1=-team", "pair 1: the tenant"),
        ("k1=" + "t" * 65, "pair 1: the tenant"),
        ("k1=a,k1=b", "pair 2: the same key is given to two tenants"),
    ],
)
def test_malformed_pairs_are_refused_without_quoting_keys(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match="pair") as info:
        parse_api_keys(text)
    assert fragment in str(info.value)
    assert "secret-key" not in str(info.value)


def test_settings_name_the_variable_on_a_bad_value() -> None:
    with pytest.raises(SettingsError, match=r"^SENTINEL_API_KEYS: pair 1"):
        load_settings({"SENTINEL_API_KEYS": "no-tenant-here"})
    with pytest.raises(SettingsError, match=r"^RATE_LIMIT_PER_MINUTE"):
        load_settings({"RATE_LIMIT_PER_MINUTE": "-1"})
    with pytest.raises(SettingsError, match=r"^SENTINEL_ADMIN_KEY"):
        load_settings({"SENTINEL_API_KEYS": "same=team", "SENTINEL_ADMIN_KEY": "same"})


def test_auth_settings_defaults_and_values() -> None:
    defaults = load_settings({})
    assert defaults.api_keys == {}
    assert defaults.sentinel_admin_key is None
    assert defaults.rate_limit_per_minute == 600
    settings = load_settings(
        {
            "SENTINEL_API_KEYS": "ka=team-a,kb=team-b",
            "SENTINEL_ADMIN_KEY": "admin-secret",
            "RATE_LIMIT_PER_MINUTE": "0",
        }
    )
    assert settings.api_keys == {"ka": "team-a", "kb": "team-b"}
    assert settings.rate_limit_per_minute == 0


def test_repr_masks_keys() -> None:
    settings = load_settings(
        {"SENTINEL_API_KEYS": "tenant-key-1=team-a", "SENTINEL_ADMIN_KEY": "admin-secret-1"}
    )
    shown = repr(settings)
    assert "tenant-key-1" not in shown
    assert "admin-secret-1" not in shown
    assert "sentinel_api_keys='***'" in shown
    assert "sentinel_admin_key='***'" in shown


def connection(*headers: tuple[str, str]) -> ASGIConnection[Any, Any, Any, Any]:
    scope: Any = {
        "type": "http",
        "path": "/v1/query",
        "headers": [(name.lower().encode(), value.encode()) for name, value in headers],
    }
    return ASGIConnection(scope)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ((), None),
        ((("Authorization", "Bearer sk-1"),), "sk-1"),
        ((("Authorization", "bearer   sk-1  "),), "sk-1"),
        ((("X-API-Key", "sk-2"),), "sk-2"),
        ((("Authorization", "Bearer sk-1"), ("X-API-Key", "sk-2")), "sk-1"),
        # Not a bearer token: the X-API-Key header (if any) is the credential.
        ((("Authorization", "Basic dXNlcjpwdw=="),), None),
        ((("Authorization", "Basic dXNlcjpwdw=="), ("X-API-Key", "sk-2")), "sk-2"),
        ((("Authorization", "Bearer "),), None),
        ((("X-API-Key", "  "),), None),
    ],
)
def test_credential_from_either_header(
    headers: tuple[tuple[str, str], ...], expected: str | None
) -> None:
    assert credential(connection(*headers)) == expected


def test_the_auth_mode_is_configuration_with_a_default_from_the_key_settings() -> None:
    assert load_settings({}).auth_mode == "open"
    assert load_settings({"SENTINEL_API_KEYS": "k=team"}).auth_mode == "keys"
    assert load_settings({"SENTINEL_ADMIN_KEY": "admin"}).auth_mode == "keys"
    explicit = load_settings({"SENTINEL_ADMIN_KEY": "admin", "SENTINEL_AUTH": " Open "})
    assert explicit.auth_mode == "open"
    assert load_settings({"SENTINEL_AUTH": "keys", "SENTINEL_API_KEYS": "k=t"}).auth_mode == "keys"


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"SENTINEL_AUTH": "keys"}, "SENTINEL_AUTH=keys needs SENTINEL_API_KEYS"),
        ({"SENTINEL_AUTH": "open", "SENTINEL_API_KEYS": "k=t"}, "SENTINEL_AUTH=open ignores"),
        ({"SENTINEL_AUTH": "closed"}, "SENTINEL_AUTH"),
    ],
)
def test_contradictory_auth_settings_stop_the_process(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(SettingsError, match=fragment):
        load_settings(env)


def test_the_embedding_budget_defaults_by_embedder() -> None:
    assert load_settings({}).embed_timeout == 0.5
    remote = load_settings({"EMBEDDING_PROVIDER": "jina", "JINA_API_KEY": "j"})
    assert remote.embed_timeout == 1.5
    assert load_settings({"EMBED_TIMEOUT_MS": "120"}).embed_timeout == 0.12
    with pytest.raises(SettingsError, match=r"^EMBED_TIMEOUT_MS"):
        load_settings({"EMBED_TIMEOUT_MS": "0"})


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"FALLBACKS": "groq"}, r"^FALLBACKS: 'groq' is not `name=a,b`"),
        ({"FALLBACKS": "groq=mistral"}, r"^FALLBACKS: 'mistral' names no provider"),
        ({"EXTRA_MODELS": "ollama=llama3"}, r"^EXTRA_MODELS: 'ollama' names no provider"),
    ],
)
def test_list_settings_are_parsed_at_load_and_name_their_variable(
    env: dict[str, str], fragment: str
) -> None:
    with pytest.raises(SettingsError, match=fragment):
        load_settings(env)


def test_list_settings_come_parsed() -> None:
    settings = load_settings(
        {
            "FALLBACKS": "groq=openai,anthropic",
            "EXTRA_MODELS": "groq=llama-3.3-70b-versatile",
            "SENTINEL_API_KEYS": "k=team",
        }
    )
    assert settings.fallback_chains == {"groq": ["openai", "anthropic"]}
    assert settings.extra_model_ids == {"groq": ["llama-3.3-70b-versatile"]}
    assert settings.api_keys is settings.api_keys  # parsed once


def test_every_v1_route_is_authenticated_by_the_app_hook() -> None:
    # `authenticate` is the app's before_request hook: a route with a hook of its own would
    # replace it (Litestar resolves the closest layer's) and be served without a key.
    app = create_app(load_settings({}))
    v1 = [
        handler
        for route in app.routes
        if route.path.startswith("/v1/")
        for handler in route.route_handlers
        if isinstance(handler, HTTPRouteHandler)
    ]
    assert len(v1) >= 10
    for handler in v1:
        assert handler.resolve_before_request() is authenticate, handler
