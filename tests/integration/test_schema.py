"""Schemathesis against Sentinel's own OpenAPI schema: no 5xx, responses match the schema.

Driven through schemathesis' Python API and hypothesis directly (its pytest plugin does not
support pytest 9 yet), one bounded property per API operation.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)
from schemathesis.specs.openapi.schemas import OpenApiSchema

from tests.fakes.openai_server import FakeOpenAI
from tests.integration.conftest import SentinelProcess

pytestmark = pytest.mark.integration

EXAMPLES_PER_OPERATION = 25
ADMIN_KEY = "admin-key-for-schema-tests"


@pytest.fixture(scope="module")
def api_schema(
    redis_stack: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OpenApiSchema]:
    with FakeOpenAI() as fake:
        process = SentinelProcess(
            {
                "REDIS_URL": redis_stack,
                "GROQ_API_KEY": "k",
                "GROQ_BASE_URL": fake.base_url,
                "SENTINEL_ADMIN_KEY": ADMIN_KEY,
            },
            Path(tmp_path_factory.mktemp("schema")) / "sentinel.log",
        )
        try:
            process.wait_ready()
            loaded = schemathesis.openapi.from_url(f"{process.base_url}/schema/openapi.json")
            assert isinstance(loaded, OpenApiSchema)
            yield loaded
        finally:
            process.stop()


def operations(schema: OpenApiSchema) -> list[object]:
    found = [result.ok() for result in schema.get_all_operations()]
    assert len(found) >= 10  # every route is in the schema
    return found


def test_generated_requests_get_no_5xx_and_schema_conformant_answers(
    api_schema: OpenApiSchema,
) -> None:
    checked = []
    for operation in operations(api_schema):

        @given(case=operation.as_strategy())  # type: ignore[attr-defined]
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def no_5xx(case: schemathesis.Case) -> None:
            headers = (
                {"X-API-Key": ADMIN_KEY}
                if "/admin/" in case.path or "cache/" in case.path
                else None
            )
            response = case.call(headers=headers, timeout=30)
            assert response.status_code < 500, (case.method, case.path, response.text)
            # Responses the schema documents must match it (the 4xx error bodies are not
            # documented per route, so status codes themselves are not checked).
            case.validate_response(
                response,
                checks=[not_a_server_error, response_schema_conformance, content_type_conformance],
            )

        no_5xx()
        checked.append(operation.label)  # type: ignore[attr-defined]
    assert any("chat/completions" in label for label in checked)
