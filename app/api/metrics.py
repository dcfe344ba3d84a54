"""What operators read: GET /metrics (Prometheus), /v1/metrics and the dashboard's data.

GET /metrics                    Prometheus text; anyone while open, else the admin key
GET /v1/metrics                 totals, hit rate, latency percentiles, savings, wrong hits
GET /v1/metrics/history         hour or day buckets: the seed's "Metrics Over Time" table
GET /v1/metrics/near-misses     the judge's recent refusals beside their nearest prompt
GET /v1/metrics/top-entries     the most-hit entries
GET /v1/metrics/layers          time in each layer (this process)

A tenant's key reads its own tenant (`tenant=` is ignored); the admin key, or anyone while
Sentinel runs open, reads all tenants or the one `tenant=` names.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from litestar import Response, get
from litestar.di import NamedDependency
from litestar.params import FromQuery, QueryParameter

from app.api.auth import require_metrics_access
from app.api.errors import ERROR_RESPONSES
from app.errors import BadRequest
from app.observability.prometheus import CONTENT_TYPE, exposition
from app.service import history, status
from app.service.admin import Admin, TopEntries
from app.service.query import QueryService

Limit = Annotated[int, QueryParameter(ge=1, le=500)]


@get("/metrics", cache=False, guards=[require_metrics_access], responses=ERROR_RESPONSES)
async def prometheus(service: NamedDependency[QueryService]) -> Response[bytes]:
    """Prometheus text format: counters and histograms of every worker, and the state."""
    state = await status.prometheus_state(service)
    body = exposition(service.cache.metrics.prometheus, state)
    return Response(body, media_type=CONTENT_TYPE)


@get("/v1/metrics", cache=False, responses=ERROR_RESPONSES)
async def metrics(
    service: NamedDependency[QueryService], viewer: NamedDependency[str | None]
) -> status.Metrics:
    """Request counters, hit rate, latency percentiles, savings, the index size and the
    estimated wrong-hit rates (a tenant's key sees its own)."""
    return await status.metrics(service, tenant=viewer)


@get("/v1/metrics/history", cache=False, responses=ERROR_RESPONSES)
async def metrics_history(  # noqa: PLR0917 (query parameters)
    service: NamedDependency[QueryService],
    viewer: NamedDependency[str | None],
    bucket: FromQuery[Literal["hour", "day"]] = "hour",
    tenant: FromQuery[str | None] = None,
    model: FromQuery[str | None] = None,
    since: FromQuery[str | None] = None,
    until: FromQuery[str | None] = None,
) -> history.History:
    """Requests, hit rate, average and p95 latency, cost per 1,000 requests and savings per
    hour or day (`since`/`until`: ISO 8601 or epoch seconds; default the last 48 hours or
    30 days), for every instance together."""
    return await history.history(
        await status.flushed(service),
        bucket=bucket,
        tenant=_scoped(viewer, tenant),
        model=_model_id(service, model),
        since=_instant(since, "since"),
        until=_instant(until, "until"),
    )


@get("/v1/metrics/near-misses", cache=False, responses=ERROR_RESPONSES)
async def near_misses(
    service: NamedDependency[QueryService],
    viewer: NamedDependency[str | None],
    tenant: FromQuery[str | None] = None,
    limit: Limit = 50,
) -> history.NearMisses:
    """Candidates the judge refused, newest first, each beside its nearest cached prompt."""
    store = await status.flushed(service)
    return await history.near_misses(store, tenant=_scoped(viewer, tenant), limit=limit)


@get("/v1/metrics/top-entries", cache=False, responses=ERROR_RESPONSES)
async def top_entries(
    admin: NamedDependency[Admin],
    viewer: NamedDependency[str | None],
    tenant: FromQuery[str | None] = None,
    limit: Limit = 20,
) -> TopEntries:
    """The most-hit entries still cached, most hits first."""
    return await admin.top_entries(tenant=_scoped(viewer, tenant), limit=limit)


@get("/v1/metrics/layers", cache=False, responses=ERROR_RESPONSES)
async def layers(service: NamedDependency[QueryService]) -> history.Layers:
    """p50 and p95 of each layer's time (exact lookup, embed, KNN, judge, provider, store)
    since this process started."""
    return history.layers(service.cache.metrics)


METRICS_ROUTES = [prometheus, metrics, metrics_history, near_misses, top_entries, layers]


def _scoped(viewer: str | None, tenant: str | None) -> str | None:
    """A tenant's key reads its own tenant; others the one asked for ("" is open mode's)."""
    return tenant if viewer is None else viewer


def _model_id(service: QueryService, model: str | None) -> str | None:
    """The `provider/model` id metrics are counted under, routed as a request's model is."""
    if not model:
        return None
    provider, native = service.providers.resolve(model)
    return f"{provider.name}/{native}"


def _instant(value: str | None, name: str) -> float | None:
    """Epoch seconds from ISO 8601 or a number; 400 naming the parameter otherwise."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise BadRequest(
            f"{name} must be ISO 8601 (2026-12-01T00:00:00Z) or epoch seconds", param=name
        ) from None
