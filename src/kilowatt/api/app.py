"""The control-plane application: ``create_app(settings)`` builds the FastAPI app.

    >>> from kilowatt.spec import Settings
    >>> from kilowatt.api import create_app
    >>> app = create_app(Settings.from_env())  # doctest: +SKIP

API routes live under ``/api/v1``; the dashboard is served at ``/``; the OpenAPI
document at ``/openapi.json`` with its explorer at ``/docs``; Prometheus metrics at
``/metrics``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry, Counter, Histogram

from kilowatt.api.errors import install_error_handlers
from kilowatt.api.routes import EXTRA_ROUTERS, ROUTERS
from kilowatt.api.serving_stats import ScrapeCache
from kilowatt.spec import Settings

__all__ = ["DEFAULT_MAX_UPLOAD_BYTES", "create_app"]

DEFAULT_MAX_UPLOAD_BYTES = 1 << 20
API_PREFIX = "/api/v1"


def create_app(
    settings: Settings,
    store: Any = None,
    *,
    registry: CollectorRegistry | None = None,
    auth_required: bool = False,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
) -> FastAPI:
    """Build the control-plane app over ``store`` (opened from ``settings`` when None).

    Args:
        settings: where the store lives and the local user (actor in local mode).
        store: an open ``kilowatt.store.Store``; tests pass one in.
        registry: where request metrics go (a fresh registry when None).
        auth_required: demand a token even while the store holds none (set by the
            server when it binds a non-loopback address).
        max_upload_bytes: larger request bodies are refused with 413.
    """
    if store is None:
        from kilowatt.store import open_store

        store = open_store(settings)
    app = FastAPI(
        docs_url=None,  # served below from vendored assets: no CDN at run time
        redoc_url=None,
        title="kilowatt control plane",
        version=_version(),
        description="Runs, metrics, artifacts, models, datasets, lineage, deployments, "
        "plans and the audit log of a kilowatt store. Send `Authorization: Bearer <token>`.",
    )
    app.state.settings = settings
    app.state.store = store
    app.state.auth_required = auth_required
    app.state.max_upload_bytes = max_upload_bytes
    app.state.registry = registry if registry is not None else CollectorRegistry()
    app.state.scrape_cache = ScrapeCache()
    install_error_handlers(app)
    _install_request_metrics(app)
    for router in ROUTERS:
        app.include_router(router, prefix=API_PREFIX)
    for router in EXTRA_ROUTERS:
        app.include_router(router)
    _mount_dashboard(app)
    return app


def _version() -> str:
    import kilowatt

    return kilowatt.__version__


def _install_request_metrics(app: FastAPI) -> None:
    registry = app.state.registry
    requests = Counter(
        "kilowatt_api_requests",
        "API requests by method, route template and status.",
        ["method", "route", "status"],
        registry=registry,
    )
    latency = Histogram(
        "kilowatt_api_request_duration_seconds",
        "API request latency by route template.",
        ["route"],
        registry=registry,
    )
    limit = app.state.max_upload_bytes

    @app.middleware("http")
    async def observe(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return JSONResponse(
                {
                    "detail": f"request body of {declared} bytes exceeds the {limit}-byte limit"
                    "; send a smaller file",
                    "error": "PayloadTooLarge",
                },
                status_code=413,
            )
        started_s = time.perf_counter()
        response = await call_next(request)
        template = _route_template(request)
        latency.labels(template).observe(time.perf_counter() - started_s)
        requests.labels(request.method, template, str(response.status_code)).inc()
        return response


def _route_template(request: Request) -> str:
    # A label per route template, not per URL: ids in paths would explode the series count.
    route = request.scope.get("route")
    path = getattr(route, "path", None)
    if path is None:
        return "unmatched"
    under_api = request.url.path.startswith(API_PREFIX) and not path.startswith(API_PREFIX)
    return API_PREFIX + path if under_api else path


def _mount_dashboard(app: FastAPI) -> None:
    ui = resources.files("kilowatt.api") / "ui"
    index = str(ui / "index.html")
    app.mount("/static", StaticFiles(directory=str(ui / "static")), name="static")

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(index, media_type="text/html")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="kilowatt control plane API",
            swagger_js_url="/static/vendor/swagger-ui-bundle.js",
            swagger_css_url="/static/vendor/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg",
        )
