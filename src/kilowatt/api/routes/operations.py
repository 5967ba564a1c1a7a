"""Projects, deployments, the audit log, tokens and usage totals."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, Field

from kilowatt.api.auth import Principal, Role, require
from kilowatt.api.convert import audit_out, deployment_out, token_out
from kilowatt.api.deps import acting_store, store_of
from kilowatt.api.models import AuditEventOut, DeploymentOut, ProjectOut, TokenOut, iso
from kilowatt.api.pagination import MAX_LIMIT, Page, PageParams, page_of, page_params
from kilowatt.api.serving_stats import ScrapeCache
from kilowatt.errors import NotFound

__all__ = ["router"]

router = APIRouter()
_SCAN_LIMIT = 100_000
DeploymentId = Path(..., ge=1, le=2**62, description="A deployment's id.")


@router.get("/projects", response_model=Page[ProjectOut], tags=["projects"])
def list_projects(
    request: Request,
    prefix: str = Query("", max_length=200, description="Only names starting with this."),
    page: PageParams = Depends(page_params),
    _: Principal = require(Role.viewer),
) -> dict[str, Any]:
    """Projects by name, with their run counts."""
    store = store_of(request)
    counts: dict[str, int] = defaultdict(int)
    for run in store.list_runs(limit=_SCAN_LIMIT):
        counts[run.project] += 1
    projects = [
        ProjectOut(name=p.name, created_at=iso(p.created_at), runs=counts[p.name])
        for p in store.list_projects()
        if p.name.startswith(prefix)
    ]
    return page_of(projects, page)


def _deployments(store: Any, deployments: list[Any]) -> list[DeploymentOut]:
    versions = {v.id: v for v in store.list_model_versions()}
    return [deployment_out(d, versions.get(d.model_version_id)) for d in deployments]


@router.get("/deployments", response_model=Page[DeploymentOut], tags=["deployments"])
def list_deployments(
    request: Request,
    model: str | None = Query(None, max_length=200, description="Only this model's."),
    status: str | None = Query(None, max_length=32, description="Only with this status."),
    page: PageParams = Depends(page_params),
    _: Principal = require(Role.viewer),
) -> dict[str, Any]:
    """Deployments, newest first."""
    store = store_of(request)
    found = [d for d in store.list_deployments(model) if status is None or d.status == status]
    result = page_of(found, page)
    result["items"] = _deployments(store, result["items"])
    return result


def _deployment(store: Any, deployment_id: int) -> Any:
    found = store.list_deployments(deployment_id=deployment_id)
    if not found:
        raise NotFound(f"no deployment {deployment_id}; GET /api/v1/deployments lists them")
    return found[0]


@router.get("/deployments/{deployment_id}", response_model=DeploymentOut, tags=["deployments"])
def get_deployment(
    request: Request, deployment_id: int = DeploymentId, _: Principal = require(Role.viewer)
) -> Any:
    """One deployment."""
    store = store_of(request)
    return _deployments(store, [_deployment(store, deployment_id)])[0]


@router.get("/deployments/{deployment_id}/stats", tags=["deployments"])
def deployment_stats(
    request: Request, deployment_id: int = DeploymentId, _: Principal = require(Role.viewer)
) -> dict[str, Any]:
    """Latency p50/p95/p99 and throughput, scraped from the endpoint's ``/metrics``.

    An endpoint that cannot be read gives nulls and an ``error`` saying why.
    """
    deployment = _deployment(store_of(request), deployment_id)
    cache: ScrapeCache = request.app.state.scrape_cache
    stats = cache.stats(deployment.id, deployment.endpoint, deployment.created_at)
    return asdict(stats)


class DeploymentCreate(BaseModel):
    """Record that a model version is served at an endpoint."""

    model: str = Field(min_length=1, max_length=200, description="name, name:3 or name@alias")
    endpoint: str = Field(min_length=1, max_length=500)
    status: str = Field("pending", min_length=1, max_length=32)


class DeploymentUpdate(BaseModel):
    status: str = Field(min_length=1, max_length=32)


@router.post("/deployments", response_model=DeploymentOut, status_code=201, tags=["deployments"])
def create_deployment(
    request: Request, body: DeploymentCreate, principal: Principal = require(Role.operator)
) -> Any:
    """Record a deployment; audited as ``deploy`` with the caller."""
    store = acting_store(request, principal)
    deployment = store.create_deployment(body.model, body.endpoint, body.status)
    return _deployments(store, [deployment])[0]


@router.patch("/deployments/{deployment_id}", response_model=DeploymentOut, tags=["deployments"])
def update_deployment(
    request: Request,
    body: DeploymentUpdate,
    deployment_id: int = DeploymentId,
    principal: Principal = require(Role.operator),
) -> Any:
    """Change a deployment's status (e.g. running, stopped); audited."""
    store = acting_store(request, principal)
    return _deployments(store, [store.update_deployment(deployment_id, body.status)])[0]


@router.get("/audit", response_model=Page[AuditEventOut], tags=["audit"])
def list_audit(
    request: Request,
    actor: str | None = Query(None, max_length=200),
    action: str | None = Query(None, max_length=64),
    target: str | None = Query(None, max_length=500, description="Target prefix, e.g. run:"),
    after_seq: int = Query(0, ge=0, le=2**62, description="Only events after this one."),
    limit: int = Query(100, ge=1, le=MAX_LIMIT),
    _: Principal = require(Role.viewer),
) -> dict[str, Any]:
    """Audit events in order; page on with ``after_seq`` = the last ``seq`` you saw."""
    events = store_of(request).list_audit(
        limit=limit, actor=actor, action=action, target=target, after_seq=after_seq
    )
    items = [audit_out(e) for e in events]
    return {"items": items, "total": len(items), "limit": limit, "offset": after_seq}


@router.get("/audit/verify", tags=["audit"])
def verify_audit(request: Request, _: Principal = require(Role.viewer)) -> dict[str, Any]:
    """Check the audit HMAC chain, and the witness's heads where one is configured; names
    the first edited, deleted or moved event."""
    report = store_of(request).verify_audit()
    if report.ok:
        witnessed = f", {report.witnessed} witnessed heads match" if report.witnessed else ""
        message = f"audit log intact: {report.events} events verified{witnessed}"
    else:
        message = f"audit log TAMPERED at event {report.first_bad_seq}: {report.reason}"
    return {**asdict(report), "message": message}


class TokenCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    role: Literal["viewer", "operator", "admin"] = "viewer"


@router.get("/tokens", response_model=Page[TokenOut], tags=["tokens"])
def list_tokens(
    request: Request,
    active: bool | None = Query(None, description="Only active (true) or revoked (false)."),
    page: PageParams = Depends(page_params),
    _: Principal = require(Role.admin),
) -> dict[str, Any]:
    """Tokens without their secrets."""
    tokens = [t for t in store_of(request).list_tokens() if active is None or t.active == active]
    result = page_of(tokens, page)
    result["items"] = [token_out(t) for t in result["items"]]
    return result


@router.post("/tokens", status_code=201, tags=["tokens"])
def create_token(
    request: Request, body: TokenCreate, principal: Principal = require(Role.admin)
) -> dict[str, str]:
    """Create a token; the response holds its secret, shown this once and never stored."""
    token_id, secret = acting_store(request, principal).create_token(body.name, body.role)
    return {"id": token_id, "name": body.name, "role": body.role, "token": secret}


@router.delete("/tokens/{token_id}", response_model=TokenOut, tags=["tokens"])
def revoke_token(
    request: Request,
    token_id: str = Path(..., min_length=1, max_length=32),
    principal: Principal = require(Role.admin),
) -> Any:
    """Revoke a token: requests sending it get 401 from now on."""
    return token_out(acting_store(request, principal).revoke_token(token_id))


def _week(epoch_s: float) -> str:
    year, week, _ = datetime.fromtimestamp(epoch_s, tz=UTC).isocalendar()
    return f"{year}-W{week:02d}"


@router.get("/totals", tags=["usage"], summary="Energy, cost and carbon totals")
def totals(
    request: Request,
    group: Literal["week", "project"] = Query("week", description="Group by project and week."),
    project: str | None = Query(None, max_length=200),
    _: Principal = require(Role.viewer),
) -> dict[str, Any]:
    """Sums of runs' time, energy, cost and carbon by project (and ISO week of start).

    A figure no run recorded is null rather than zero.
    """
    sums: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    fields = ("time_s", "energy_j", "cost_usd", "carbon_gco2e")
    for run in store_of(request).list_runs(project, limit=_SCAN_LIMIT):
        key = (run.project, _week(run.start_time) if group == "week" else "")
        sums[key]["runs"] += 1
        for field in fields:
            value = getattr(run, field)
            if value is not None:  # unrecorded stays unknown (null), not zero
                sums[key][field] += value
    items = [
        {"project": p, "week": w or None, "runs": int(s["runs"]), **{f: s.get(f) for f in fields}}
        for (p, w), s in sorted(sums.items())
    ]
    grand = {f: _sum_known(item[f] for item in items) for f in fields}
    return {"items": items, "total": {"runs": sum(i["runs"] for i in items), **grand}}


def _sum_known(values: Any) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None
