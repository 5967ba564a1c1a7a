"""The API's routers, one module per resource, in the order of the OpenAPI document."""

from kilowatt.api.routes import plans, system

# /metrics sits outside the /api/v1 prefix where Prometheus expects it.
ROUTERS = (system.router, plans.router)
EXTRA_ROUTERS = (system.metrics_router,)

__all__ = ["EXTRA_ROUTERS", "ROUTERS"]
