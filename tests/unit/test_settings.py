from __future__ import annotations

import pytest

from app.lifespan import _config_value
from app.settings import SettingsError, load_settings


def test_defaults_without_environment() -> None:
    settings = load_settings({})
    assert settings.redis_url is None
    assert settings.embedded_redis_port == 6390
    assert settings.cache_ttl == 3600
    assert settings.similarity_threshold is None  # the guard's floor, or 0.9 without a guard
    assert settings.guard == "on"
    assert settings.guard_threshold is None
    assert settings.local_embedding_model == "minilm-l6-sentinel-ft2-qint8"
    assert settings.max_prompt_chars == 32000
    assert settings.port == 8000
    assert settings.embedding_provider == "local"
    assert settings.groq_base_url == "https://api.groq.com/openai/v1"
    assert settings.groq_model == "llama-3.1-8b-instant"
    assert not settings.upstream_configured


def test_values_are_parsed_from_strings() -> None:
    settings = load_settings(
        {
            "REDIS_URL": "redis://example:6379/0",
            "SIMILARITY_THRESHOLD": "0.8",
            "CACHE_TTL": "60",
            "PORT": "9000",
            "LOG_LEVEL": "debug",
            "EMBEDDING_PROVIDER": "JINA",
            "JINA_API_KEY": "jk",
            "GROQ_API_KEY": "gk",
        }
    )
    assert settings.redis_url == "redis://example:6379/0"
    assert settings.similarity_threshold == 0.8
    assert settings.cache_ttl == 60
    assert settings.port == 9000
    assert settings.log_level == "DEBUG"
    assert settings.embedding_provider == "jina"
    assert settings.upstream_configured


def test_empty_values_count_as_unset() -> None:
    settings = load_settings({"REDIS_URL": "", "GROQ_API_KEY": "  "})
    assert settings.redis_url is None
    assert not settings.upstream_configured


# Values each variable refuses.
BAD_VALUES = {
    "SIMILARITY_THRESHOLD": ["1.5", "-0.1", "high"],
    "CACHE_TTL": ["0", "-5"],
    "EMBEDDING_PROVIDER": ["word2vec"],
    "PORT": ["70000"],
    "MAX_PROMPT_CHARS": ["0"],
    "GUARD": ["maybe"],
    "GUARD_THRESHOLD": ["2"],
    "LOCAL_EMBEDDING_MODEL": ["bert"],
}


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        *(({name: value}, name) for name, values in BAD_VALUES.items() for value in values),
        # A good value that needs another: the Jina embedder without its key names the key.
        ({"EMBEDDING_PROVIDER": "jina"}, "JINA_API_KEY"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(env)
    message = str(info.value)
    assert variable in message
    assert "\n" not in message


def test_repr_hides_secrets() -> None:
    settings = load_settings({"GROQ_API_KEY": "gsk_secret", "JINA_API_KEY": "jina_secret"})
    assert "gsk_secret" not in repr(settings)
    assert "jina_secret" not in repr(settings)


def test_config_reply_is_read_in_both_protocols() -> None:
    assert _config_value([[b"PARTIAL_INDEXED_DOCS", b"true"]]) == "true"
    assert _config_value({b"PARTIAL_INDEXED_DOCS": b"false"}) == "false"
    assert _config_value([]) == ""
