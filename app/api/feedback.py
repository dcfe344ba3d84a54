"""POST /v1/feedback: a user's verdict on an answer (what a thumbs-down sends)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request, post
from litestar.di import NamedDependency
from litestar.params import JSONBody

from app.api.auth import tenant_of
from app.api.errors import ERROR_RESPONSES
from app.api.schemas import refuse_control_characters
from app.errors import CacheUnavailable
from app.service.audit import FeedbackResult
from app.service.query import QueryService


class FeedbackRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of POST /v1/feedback."""

    # The `entry_id` of the answer (in /v1/query's body, X-Sentinel-Entry on every response).
    entry_id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,128}$")]
    correct: bool
    # The question that was asked, so a wrong semantic hit stops for that question only;
    # without it (or for the entry's own question) a wrong answer's entry is deleted.
    prompt: Annotated[str, msgspec.Meta(min_length=1, max_length=32_000)] | None = None


@post("/v1/feedback", status_code=200, responses=ERROR_RESPONSES)
async def feedback(
    request: Request[Any, Any, Any],
    data: JSONBody[FeedbackRequest],
    service: NamedDependency[QueryService],
) -> FeedbackResult:
    """Say whether an answer was right; a wrong one stops being served for that question."""
    if data.prompt is not None:
        refuse_control_characters(data.prompt, "prompt")
    if service.audit is None:
        raise CacheUnavailable("feedback needs the cache, which this instance runs without")
    return await service.audit.feedback(
        tenant=tenant_of(request), entry_id=data.entry_id, prompt=data.prompt, correct=data.correct
    )
