"""Health, identity and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kilowatt.api.auth import Principal, Role, require

__all__ = ["metrics_router", "router"]

router = APIRouter(tags=["system"])
metrics_router = APIRouter(tags=["system"])


@router.get("/health", summary="Liveness probe (no token needed)")
def health(request: Request) -> dict[str, Any]:
    """``{"status": "ok", "auth": ...}``: whether this server demands a token."""
    state = request.app.state
    auth = state.auth_required or state.store.has_active_tokens()
    return {"status": "ok", "auth": "token" if auth else "local"}


@router.get("/whoami", summary="The caller's actor name and role")
def whoami(principal: Principal = require(Role.viewer)) -> dict[str, str]:
    """The actor recorded in the audit log for this caller, and its role."""
    return {"actor": principal.actor, "role": principal.role.name}


@metrics_router.get("/metrics", summary="Prometheus metrics of this server")
def metrics(request: Request, _: Principal = require(Role.viewer)) -> Response:
    """Request counts and latencies in the Prometheus text exposition format."""
    body = generate_latest(request.app.state.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
