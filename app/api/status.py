"""GET /health (the metrics routes are in api/metrics.py)."""

from __future__ import annotations

from litestar import Response, get
from litestar.datastructures import State
from litestar.di import NamedDependency

from app.api.errors import ERROR_RESPONSES
from app.service import status
from app.service.access import AccessControl
from app.service.query import QueryService


@get("/health", cache=False, responses=ERROR_RESPONSES)
async def health(
    service: NamedDependency[QueryService], access: NamedDependency[AccessControl], state: State
) -> Response[status.Health]:
    """200 while Sentinel answers requests (`status` "ok" or "degraded", with reasons).

    A degraded cache still answers through the provider, so the load balancer keeps the
    instance; 503 only when nothing can be answered (see status.Health).
    """
    report = await status.health(service, redis_mode=state.redis_mode, access=access)
    return Response(report, status_code=200 if report.serving else 503)
