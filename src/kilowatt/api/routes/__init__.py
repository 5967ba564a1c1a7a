"""The API's routers, one module per concept, in the order of the OpenAPI document."""

from kilowatt.api.routes import operations, plans, registry, runs, system

ROUTERS = (system.router, runs.router, registry.router, operations.router, plans.router)
# /metrics sits outside the /api/v1 prefix, where Prometheus looks for it.
EXTRA_ROUTERS = (system.metrics_router,)

__all__ = ["EXTRA_ROUTERS", "ROUTERS"]
