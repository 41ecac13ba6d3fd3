"""The web front: ``create_app(settings)`` is the one place that lists routes, exception
handlers, templates, static files and the lifespan (the bus connection on ``app.state``)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import nats.errors
from litestar import Litestar, MediaType, Request, Response
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Template
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from app import filters, openapi
from app.access import login
from app.access.middleware import AccessMiddleware
from app.access.policy import Access
from app.bus import Bus, connect
from app.config import Settings
from app.errors import SparkError, error_body
from app.proxy.core import lifespan as proxy_lifespan
from app.routes import (
    api,
    blob,
    coordination,
    dashboard,
    models,
    pages,
    redaction,
    services,
    swap,
    v1,
)
from app.routes.health import ROUTES as HEALTH_ROUTES

log = logging.getLogger(__name__)

PACKAGE = Path(__file__).resolve().parent
HTTP_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "BODY_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    429: "TOO_MANY_REQUESTS",
}


def templates_dir() -> Path:
    """Installed wheels carry ``app/templates``; a checkout has top-level ``templates/``."""
    for candidate in (PACKAGE / "templates", PACKAGE.parent / "templates"):
        if (candidate / "base.html").is_file():
            return candidate
    raise FileNotFoundError("templates folder not found beside the app package")


def _wants_html(request: Request[Any, Any, Any]) -> bool:
    path = request.url.path
    accept = request.headers.get("accept", "")
    return not path.startswith("/api/") and "text/html" in accept


def _error(request: Request[Any, Any, Any], status: int, message: str, code: str) -> Response[Any]:
    if request.headers.get("hx-request") == "true":  # an htmx swap: a fragment in place
        return Template(
            "_error.html", context={"error": message, "code": code},
            status_code=status, media_type=MediaType.HTML,
        )  # fmt: skip
    if _wants_html(request):
        return Template(
            "error.html",
            context={"status": status, "error": message, "code": code},
            status_code=status,
            media_type=MediaType.HTML,
        )
    return Response({"error": message, "code": code}, status_code=status)


def on_spark_error(request: Request[Any, Any, Any], exc: SparkError) -> Response[Any]:
    body = error_body(exc)
    return _error(request, exc.status, body["error"], body["code"])


def on_http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    status = exc.status_code
    return _error(request, status, str(exc.detail), HTTP_CODES.get(status, f"HTTP_{status}"))


def on_bus_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.warning("bus error on %s: %s", request.url.path, type(exc).__name__)
    return _error(request, 503, "message bus unavailable; try again shortly", "BUS_UNAVAILABLE")


def on_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.exception("unhandled error on %s", request.url.path)
    return _error(request, 500, "internal error (see the server log)", "INTERNAL")


def create_app(settings: Settings, bus: Bus | None = None) -> Litestar:
    """Assemble the web front. With no ``bus`` given, the lifespan connects one at start."""
    access = Access.from_settings(settings)  # tokens hashed once; a bad one is a ConfigError

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.bus = bus or await connect(settings, name="spark-web")
        try:
            yield
        finally:
            await app.state.bus.close()

    return Litestar(
        route_handlers=[
            *api.ROUTES,
            *models.ROUTES,
            *swap.ROUTES,
            *coordination.ROUTES,
            *services.ROUTES,
            *blob.ROUTES,
            *v1.ROUTES,
            *redaction.ROUTES,
            *HEALTH_ROUTES,
            *pages.ROUTES,
            *login.ROUTES,
            *dashboard.ROUTES,
            create_static_files_router(path="/static", directories=[PACKAGE / "static"]),
        ],
        lifespan=[lifespan, proxy_lifespan, dashboard.lifespan],
        on_startup=[openapi.document_errors],
        exception_handlers={
            SparkError: on_spark_error,
            HTTPException: on_http_error,
            nats.errors.Error: on_bus_error,
            Exception: on_unexpected,
        },
        template_config=TemplateConfig(
            directory=templates_dir(),
            engine=JinjaTemplateEngine,
            engine_callback=filters.register,
        ),
        middleware=[AccessMiddleware(access)],
        state=State({"access": access}),
        request_max_body_size=1_000_000,
        debug=False,
    )
