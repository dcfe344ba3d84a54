"""POST /v1/query: answer a prompt from the cache or the upstream."""

from __future__ import annotations

import msgspec
from litestar import Response, post
from litestar.di import NamedDependency
from litestar.params import JSONBody

from app.api.schemas import QueryRequest
from app.service.query import Answer, Query, QueryService

_CACHE_HEADER = {"exact": "EXACT-HIT", "semantic": "SEMANTIC-HIT", "miss": "MISS"}


@post("/v1/query", status_code=200)
async def query(
    data: JSONBody[QueryRequest], service: NamedDependency[QueryService]
) -> Response[Answer]:
    """Answer a prompt: exact hit, semantic hit, or a fresh upstream answer."""
    answer = await service.answer(msgspec.convert(msgspec.structs.asdict(data), Query))
    return Response(answer, headers={"X-Sentinel-Cache": _CACHE_HEADER[answer.match]})
