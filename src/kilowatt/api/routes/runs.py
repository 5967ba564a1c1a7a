"""Runs: list with filters, read one, its metric histories, artifacts and lineage; write."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from kilowatt.api.auth import Principal, Role, require
from kilowatt.api.convert import artifact_out, lineage_out, run_out
from kilowatt.api.deps import acting_store, audit, parse_pairs, store_of
from kilowatt.api.downsample import minmax_indices
from kilowatt.api.models import ArtifactOut, LineageOut, MetricHistoryOut, RunOut, finite
from kilowatt.api.pagination import Page, PageParams, page_of, page_params
from kilowatt.api.routes.plans import read_limited_body
from kilowatt.errors import SpecError

__all__ = ["router"]

router = APIRouter(tags=["runs"])

# Runs fetched from the store to filter and count before cutting a page.
_SCAN_LIMIT = 100_000
_CHUNK_BYTES = 1 << 20
RunStatus = Literal["running", "finished", "failed", "killed"]
RunId = str


@router.get("/runs", response_model=Page[RunOut], summary="List runs, newest first")
def list_runs(
    request: Request,
    project: str | None = Query(None, max_length=200, description="Only this project."),
    status: RunStatus | None = Query(None, description="Only runs with this status."),
    tag: list[str] | None = Query(None, description="key=value; repeat to require several."),
    param: list[str] | None = Query(None, description="key=value; repeat to require several."),
    page: PageParams = Depends(page_params),
    _: Principal = require(Role.viewer),
) -> dict[str, Any]:
    """Runs matching every filter given."""
    runs = store_of(request).list_runs(
        project, status=status, tags=parse_pairs(tag, "tag"),
        params=parse_pairs(param, "param"), limit=_SCAN_LIMIT,
    )  # fmt: skip
    result = page_of(runs, page)
    result["items"] = [run_out(run) for run in result["items"]]
    return result


@router.get("/runs/{run_id}", response_model=RunOut, summary="One run")
def get_run(request: Request, run_id: RunId, _: Principal = require(Role.viewer)) -> RunOut:
    """A run with its params, tags, environment, usage summary and metric keys."""
    store = store_of(request)
    run = store.get_run(run_id)
    return run_out(run, store.metric_keys(run.id))


@router.get("/runs/{run_id}/metrics", response_model=dict[str, float | None])
def latest_metrics(
    request: Request, run_id: RunId, _: Principal = require(Role.viewer)
) -> dict[str, float | None]:
    """Each metric's value at its highest step (NaN shows as null)."""
    store = store_of(request)
    run = store.get_run(run_id)
    return {key: finite(value) for key, value in store.latest_metrics(run.id).items()}


@router.get(
    "/runs/{run_id}/metrics/{key:path}",
    response_model=MetricHistoryOut,
    summary="A metric's history (downsampled unless full=true)",
)
def metric_history(
    request: Request,
    run_id: RunId,
    key: str,
    max_points: int = Query(1000, ge=2, le=100_000, description="Point budget when downsampling."),
    full: bool = Query(False, description="Every point, at full resolution."),
    _: Principal = require(Role.viewer),
) -> dict[str, Any]:
    """Steps, values and times as columns. Long series keep each bucket's min and max."""
    store = store_of(request)
    run = store.get_run(run_id)
    history = store.metric_history(run.id, key)
    if len(history) == 0 and key not in store.metric_keys(run.id):
        from kilowatt.errors import NotFound

        raise NotFound(f"run {run.id} has no metric {key!r}; GET /runs/{run.id} lists its keys")
    total = len(history)
    chosen = None if full else minmax_indices(history.value, max_points)
    steps, values, times = history.step, history.value, history.time
    if chosen is not None and len(chosen) < total:
        steps, values, times = steps[chosen], values[chosen], times[chosen]
    return {
        "key": key,
        "steps": steps.tolist(),
        # NaN is not JSON: it shows as null (a gap in the chart).
        "values": [None if v != v else v for v in values.tolist()],
        "times": times.tolist(),
        "total_points": total,
        "downsampled": len(steps) < total,
    }


@router.get("/runs/{run_id}/artifacts", response_model=Page[ArtifactOut])
def list_artifacts(
    request: Request,
    run_id: RunId,
    prefix: str = Query("", max_length=500, description="Only paths starting with this."),
    page: PageParams = Depends(page_params),
    _: Principal = require(Role.viewer),
) -> dict[str, Any]:
    """A run's artifacts by path, with size and SHA-256."""
    store = store_of(request)
    run = store.get_run(run_id)
    found = [a for a in store.list_artifacts(run.id) if a.name.startswith(prefix)]
    result = page_of(found, page)
    result["items"] = [artifact_out(a) for a in result["items"]]
    return result


@router.get(
    "/runs/{run_id}/artifacts/{path:path}",
    summary="Download an artifact",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def download_artifact(
    request: Request, run_id: RunId, path: str, _: Principal = require(Role.viewer)
) -> StreamingResponse:
    """The artifact's bytes, streamed."""
    store = store_of(request)
    run = store.get_run(run_id)
    artifact = store.get_artifact(run.id, path)
    handle = store.open_artifact(run.id, path)

    def chunks() -> Any:
        with handle:
            while chunk := handle.read(_CHUNK_BYTES):
                yield chunk

    filename = Path(artifact.name).name.replace('"', "")
    headers = {
        "Content-Disposition": f'attachment; filename="{filename}"',
        "Content-Length": str(artifact.size_bytes),
        "ETag": f'"{artifact.sha256}"',
    }
    return StreamingResponse(chunks(), media_type="application/octet-stream", headers=headers)


@router.get("/runs/{run_id}/lineage", response_model=LineageOut)
def run_lineage(request: Request, run_id: RunId, _: Principal = require(Role.viewer)) -> Any:
    """Datasets the run read, and the models and deployments that came from it."""
    store = store_of(request)
    run = store.get_run(run_id)
    return lineage_out(store.lineage_of(("run", run.id)))


class RunCreate(BaseModel):
    """A new run (status ``running``)."""

    project: str = Field(min_length=1, max_length=200)
    name: str | None = Field(None, min_length=1, max_length=200)
    params: dict[str, str | int | float | bool] = Field(default_factory=dict)
    tags: dict[str, str] = Field(default_factory=dict)


class MetricsIn(BaseModel):
    """Metric values at one step."""

    step: int = Field(ge=0, le=2**62)
    metrics: dict[str, float] = Field(min_length=1, max_length=1000)


class RunFinish(BaseModel):
    status: Literal["finished", "failed", "killed"] = "finished"


@router.post("/runs", response_model=RunOut, status_code=201, summary="Start a run")
def create_run(
    request: Request, body: RunCreate, principal: Principal = require(Role.operator)
) -> RunOut:
    """Start a run in a project (created on first use); audited with the caller."""
    run = acting_store(request, principal).create_run(
        body.project, name=body.name, params=body.params, tags=body.tags
    )
    return run_out(run)


@router.post("/runs/{run_id}/metrics", summary="Log metric values at a step")
def log_metrics(
    request: Request, run_id: RunId, body: MetricsIn, principal: Principal = require(Role.operator)
) -> dict[str, int]:
    """Record ``metrics`` at ``step``; sending the same step again overwrites it."""
    import time

    store = acting_store(request, principal)
    run = store.get_run(run_id)
    if run.status != "running":
        from kilowatt.errors import Conflict

        raise Conflict(f"run {run.id} is {run.status}; metrics go to running runs only")
    now = time.time()
    points = [(key, body.step, now, value) for key, value in body.metrics.items()]
    logged = store.log_metric_points(run.id, f"api:{principal.actor}", points)
    audit(
        request,
        principal,
        "run.metrics",
        f"run:{run.id}",
        step=body.step,
        keys=sorted(body.metrics),
    )
    return {"logged": logged}


@router.post("/runs/{run_id}/artifacts", response_model=ArtifactOut, status_code=201)
async def upload_artifact(
    request: Request,
    run_id: RunId,
    path: str = Query(..., min_length=1, max_length=500, description="Name to store it under."),
    principal: Principal = require(Role.operator),
) -> ArtifactOut:
    """Upload the request body as an artifact (refused past the upload limit)."""
    if path.startswith("/") or ".." in Path(path).parts:
        raise SpecError(f"artifact path {path!r} must be relative, without '..'")
    body = await read_limited_body(request)
    store = acting_store(request, principal)
    run = store.get_run(run_id)
    with tempfile.TemporaryDirectory() as folder:
        local = Path(folder) / "upload"
        local.write_bytes(body)
        artifact = store.log_artifact(run.id, local, name=path)
    audit(
        request, principal, "artifact.upload", f"run:{run.id}",
        name=artifact.name, sha256=artifact.sha256, size_bytes=artifact.size_bytes,
    )  # fmt: skip
    return artifact_out(artifact)


@router.post("/runs/{run_id}/finish", response_model=RunOut, summary="End a run")
def finish_run(
    request: Request, run_id: RunId, body: RunFinish, principal: Principal = require(Role.operator)
) -> RunOut:
    """End a run as finished, failed or killed; audited."""
    return run_out(acting_store(request, principal).finish_run(run_id, body.status))


@router.delete("/runs/{run_id}", summary="Delete a run")
def delete_run(
    request: Request,
    run_id: RunId,
    force: bool = Query(False, description="Delete even when models or datasets came from it."),
    principal: Principal = require(Role.admin),
) -> dict[str, Any]:
    """Delete a run; refused (409) when it has downstream lineage unless ``force``."""
    dependents = acting_store(request, principal).delete_run(run_id, force=force)
    return {"deleted": run_id, "dependents": dependents}
