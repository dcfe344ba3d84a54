"""API keys on the wire: the check every /v1 route passes, and the tenant it hands on.

`authenticate` runs before every HTTP route of the app (registered once, in create_app, as the
app's `before_request` hook) and admits a /v1 request with a tenant's key, so a route added
later is protected without opting in. Admin routes carry the `require_admin_key` guard, which
wants SENTINEL_ADMIN_KEY. Handlers read the tenant with `tenant_of(request)` and put it in the
Ask they build.

Why a hook and not an app-wide guard: Litestar hands every guard a `copy()` of the route
handler on every request. The hook runs at the same point (before the body is read, inside the
route's exception handling), on the request itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.di import Provide
from litestar.handlers.base import BaseRouteHandler

from app.service.access import AccessControl
from app.service.admin import Admin

# Where the guard leaves the tenant for the handler (the request's own state).
TENANT_STATE = "sentinel_tenant"
PROTECTED_PREFIX = "/v1/"
# Metrics routes also take the admin key, which sees every tenant (the dashboard's key).
METRICS_PREFIX = "/v1/metrics"
ADMIN_STATE = "sentinel_admin"
# A refusal of the fast path's admission, raised again by `authenticate`.
REFUSED_STATE = "sentinel_refused"


def credential(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    """The key a request presents: `Authorization: Bearer <key>`, else `X-API-Key: <key>`."""
    return presented_key(connection.headers)


def presented_key(headers: Mapping[str, str]) -> str | None:
    """`credential` from headers (lower-case names; the first value of a repeated one)."""
    scheme, _, token = headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("x-api-key", "").strip() or None


async def admit_into(
    state: dict[str, Any], access: AccessControl, headers: Mapping[str, str]
) -> str:
    """The tenant of a request to a tenant route, as `authenticate` admits it, for the fast
    path (app/api/fast.py); the outcome, a refusal included, stays in the request's `state`
    so that `authenticate` raises it or lets the request through without admitting it twice
    (a rate-limited key's request counts once)."""
    try:
        tenant = "" if access.mode == "open" else await access.admit(presented_key(headers))
    except Exception as exc:
        state[REFUSED_STATE] = exc
        raise
    state[TENANT_STATE] = tenant
    return tenant


async def authenticate(connection: Request[Any, Any, Any]) -> None:
    """Admit a /v1 request with a tenant's key (or anyone while Sentinel runs open)."""
    # The route's full template as matched (router prefixes included), not the raw path.
    route = connection.scope.get("path_template") or connection.scope["path"]
    if not route.startswith(PROTECTED_PREFIX):
        return  # /health, /schema
    route_handler: BaseRouteHandler = connection.scope["route_handler"]
    if require_admin_key in (route_handler.guards or ()):
        return  # the admin key decides (its guard already ran), not a tenant's
    state = connection.state
    if (refused := state.get(REFUSED_STATE)) is not None:
        raise refused  # the fast path's admission refused it already
    if TENANT_STATE in state:
        return  # admitted by the fast path already (admit_into)
    access: AccessControl = connection.app.state.access
    if access.mode == "open":
        # Everyone is tenant "": no header is read, nothing is asked of Redis.
        connection.state[TENANT_STATE] = ""
        return
    presented = credential(connection)
    if route.startswith(METRICS_PREFIX) and access.is_admin(presented):
        connection.state[ADMIN_STATE] = True
        connection.state[TENANT_STATE] = ""
        return
    connection.state[TENANT_STATE] = await access.admit(presented)


async def require_admin_key(
    connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
) -> None:
    """Admit only the holder of SENTINEL_ADMIN_KEY (403 while it is unset)."""
    access: AccessControl = connection.app.state.access
    access.admit_admin(credential(connection))


def tenant_of(request: Request[Any, Any, Any]) -> str:
    """The tenant `authenticate` admitted ("" when Sentinel runs open).

    A plain call, not a dependency: a handler with two dependencies has Litestar resolve them
    in an anyio task group, two tasks per request (5% of an exact hit's time under cProfile).
    """
    tenant = request.state.get(TENANT_STATE)
    if not isinstance(tenant, str):
        # A handler asking for a tenant on a route the guard skipped: refuse, never default.
        raise RuntimeError(f"no API key was checked for {request.url.path}")
    return tenant


async def require_metrics_access(
    connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
) -> None:
    """GET /metrics (outside /v1): anyone while Sentinel runs open, else the admin key."""
    access: AccessControl = connection.app.state.access
    if access.mode != "open":
        access.admit_admin(credential(connection))


def provide_viewer(request: Request[Any, Any, Any]) -> str | None:
    """Whose metrics a caller may read: None for all tenants (open mode, the admin key), else
    its own tenant's."""
    access: AccessControl = request.app.state.access
    if access.mode == "open" or request.state.get(ADMIN_STATE):
        return None
    return tenant_of(request)


def provide_access(state: State) -> AccessControl:
    """The AccessControl the lifespan built."""
    access: AccessControl = state.access
    return access


def provide_admin(state: State) -> Admin:
    """The Admin service the lifespan built."""
    admin: Admin = state.admin
    return admin


# Never a dependency named `tenant`: Litestar reports a body or query field named like a
# dependency as a server error (500) instead of a 400, and `tenant` is a field of admin bodies.
DEPENDENCIES = {
    "viewer": Provide(provide_viewer, sync_to_thread=False),
    "access": Provide(provide_access, sync_to_thread=False),
    "admin": Provide(provide_admin, sync_to_thread=False),
}
