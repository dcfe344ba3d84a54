"""create_app(): the one place the Litestar application is put together."""

from __future__ import annotations

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig

from app.api import auth
from app.api.admin import ADMIN_ROUTES
from app.api.cache_aside import cache_lookup, cache_store
from app.api.chat import chat_completions, models
from app.api.dashboard import DASHBOARD_ROUTES
from app.api.errors import EXCEPTION_HANDLERS, MAX_BODY_BYTES
from app.api.feedback import feedback
from app.api.metrics import METRICS_ROUTES
from app.api.middleware import json_body_middleware, request_log_middleware
from app.api.query import query
from app.api.status import health
from app.lifespan import lifespan
from app.service.query import QueryService
from app.settings import Settings, load_settings
from app.version import VERSION


def provide_service(state: State) -> QueryService:
    """The QueryService the lifespan built."""
    service: QueryService = state.service
    return service


def create_app(settings: Settings | None = None, *, fast_path: bool = True) -> Litestar:
    """Build the application; settings come from the environment unless given.

    `fast_path=False` sends every request through Litestar's handlers (app/api/fast.py
    answers cache hits before them otherwise): the tests compare the two.
    """
    settings = settings or load_settings()
    return Litestar(
        route_handlers=[
            query,
            chat_completions,
            models,
            cache_lookup,
            cache_store,
            feedback,
            health,
            *METRICS_ROUTES,
            *ADMIN_ROUTES,
            *DASHBOARD_ROUTES,
        ],
        dependencies={
            "service": Provide(provide_service, sync_to_thread=False),
            **auth.DEPENDENCIES,
        },
        # Every /v1 route needs a tenant's API key (admin routes: the admin key) once any key
        # exists; a route added later is covered without opting in (no route sets its own).
        before_request=auth.authenticate,
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[request_log_middleware, json_body_middleware],
        lifespan=[lifespan],
        state=State({"settings": settings, "fast_path": fast_path, "exact_plans": {}}),
        openapi_config=OpenAPIConfig(title="Sentinel", version=VERSION),
        request_max_body_size=MAX_BODY_BYTES,
        logging_config=None,  # app/logging.py configures JSON lines; Litestar must not override
        debug=False,
    )
