"""The model registry (models, versions, aliases), datasets and the lineage graph."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, Field

from kilowatt.api.auth import Principal, Role, require
from kilowatt.api.convert import dataset_out, lineage_out, version_out
from kilowatt.api.deps import acting_store, store_of
from kilowatt.api.models import DatasetOut, LineageOut, ModelOut, ModelVersionOut
from kilowatt.api.pagination import Page, PageParams, page_of, page_params
from kilowatt.errors import NotFound

__all__ = ["router"]

router = APIRouter()

ModelName = Path(..., min_length=1, max_length=200, description="A registered model's name.")
Version = Path(..., ge=1, le=2**31, description="A version number.")
AliasName = Path(..., min_length=1, max_length=64, description="An alias of a model.")
NodeKind = Literal["dataset", "run", "model_version", "deployment"]


def _models(versions: list[Any]) -> list[ModelOut]:
    by_name: dict[str, list[Any]] = defaultdict(list)
    for version in versions:
        by_name[version.name].append(version)
    models = []
    for name, group in sorted(by_name.items()):
        aliases = {alias: v.version for v in group for alias in v.aliases}
        latest = max(v.version for v in group)
        models.append(
            ModelOut(name=name, versions=len(group), latest_version=latest, aliases=aliases)
        )
    return models


@router.get("/models", response_model=Page[ModelOut], tags=["models"], summary="List models")
def list_models(
    request: Request,
    prefix: str = Query("", max_length=200, description="Only names starting with this."),
    alias: str | None = Query(None, max_length=64, description="Only models with this alias."),
    page: PageParams = Depends(page_params),
    _: Principal = require(Role.viewer),
) -> dict[str, Any]:
    """Registered models with their version count and aliases."""
    models = [
        m for m in _models(store_of(request).list_model_versions()) if m.name.startswith(prefix)
    ]
    if alias is not None:
        models = [m for m in models if alias in m.aliases]
    return page_of(models, page)


@router.get("/models/{name}", response_model=ModelOut, tags=["models"])
def get_model(request: Request, name: str = ModelName, _: Principal = require(Role.viewer)) -> Any:
    """One model: version count, latest version and aliases."""
    versions = store_of(request).list_model_versions(name)
    if not versions:
        raise NotFound(f"no model {name!r} is registered; GET /api/v1/models lists them")
    return _models(versions)[0]


@router.get("/models/{name}/versions", response_model=Page[ModelVersionOut], tags=["models"])
def list_versions(
    request: Request,
    name: str = ModelName,
    page: PageParams = Depends(page_params),
    _: Principal = require(Role.viewer),
) -> dict[str, Any]:
    """A model's versions, newest first."""
    versions = store_of(request).list_model_versions(name)
    if not versions:
        raise NotFound(f"no model {name!r} is registered; GET /api/v1/models lists them")
    result = page_of(sorted(versions, key=lambda v: -v.version), page)
    result["items"] = [version_out(v) for v in result["items"]]
    return result


@router.get("/models/{name}/versions/{version}", response_model=ModelVersionOut, tags=["models"])
def get_version(
    request: Request,
    name: str = ModelName,
    version: int = Version,
    _: Principal = require(Role.viewer),
) -> Any:
    """One model version with its source run, artifact, signature and aliases."""
    return version_out(store_of(request).get_model_version(f"{name}:{version}"))


@router.get(
    "/models/{name}/versions/{version}/lineage", response_model=LineageOut, tags=["lineage"]
)
def version_lineage(
    request: Request,
    name: str = ModelName,
    version: int = Version,
    _: Principal = require(Role.viewer),
) -> Any:
    """Which datasets and runs made this version, and where it is deployed."""
    store = store_of(request)
    return lineage_out(store.lineage_of(store.get_model_version(f"{name}:{version}")))


class VersionCreate(BaseModel):
    """Register an artifact of a run as the model's next version."""

    run_id: str = Field(min_length=1, max_length=64)
    artifact: str = Field(min_length=1, max_length=500)
    aliases: list[str] = Field(default_factory=list, max_length=16)
    signature: dict[str, Any] | None = None


class AliasSet(BaseModel):
    version: int = Field(ge=1, le=2**31)


@router.post(
    "/models/{name}/versions", response_model=ModelVersionOut, status_code=201, tags=["models"]
)
def register_version(
    request: Request,
    body: VersionCreate,
    name: str = ModelName,
    principal: Principal = require(Role.operator),
) -> Any:
    """Register a model version; audited with the caller."""
    version = acting_store(request, principal).register_model(
        name, run_id=body.run_id, artifact=body.artifact, signature=body.signature,
        aliases=body.aliases,
    )  # fmt: skip
    return version_out(version)


@router.put("/models/{name}/aliases/{alias}", tags=["models"], summary="Point an alias")
def set_alias(
    request: Request,
    body: AliasSet,
    name: str = ModelName,
    alias: str = AliasName,
    principal: Principal = require(Role.operator),
) -> dict[str, Any]:
    """Move ``alias`` to ``version`` atomically; returns the version it replaced."""
    replaced = acting_store(request, principal).set_alias(name, alias, body.version)
    return {"model": name, "alias": alias, "version": body.version, "replaced": replaced}


@router.delete("/models/{name}/aliases/{alias}", tags=["models"], summary="Remove an alias")
def delete_alias(
    request: Request,
    name: str = ModelName,
    alias: str = AliasName,
    principal: Principal = require(Role.operator),
) -> dict[str, Any]:
    """Remove an alias; returns the version it pointed at."""
    version = acting_store(request, principal).delete_alias(name, alias)
    return {"model": name, "alias": alias, "version": version}


@router.delete("/models/{name}/versions/{version}", tags=["models"], summary="Delete a version")
def delete_version(
    request: Request,
    name: str = ModelName,
    version: int = Version,
    force: bool = Query(False, description="Delete even when deployed or aliased."),
    principal: Principal = require(Role.admin),
) -> dict[str, Any]:
    """Delete a version; refused (409) while deployed or aliased unless ``force``."""
    dependents = acting_store(request, principal).delete_model_version(
        f"{name}:{version}", force=force
    )
    return {"deleted": f"{name}:{version}", "dependents": dependents}


@router.get("/datasets", response_model=Page[DatasetOut], tags=["datasets"])
def list_datasets(
    request: Request,
    name: str | None = Query(None, max_length=200, description="Only this dataset's versions."),
    page: PageParams = Depends(page_params),
    _: Principal = require(Role.viewer),
) -> dict[str, Any]:
    """Recorded datasets by name, with fingerprint, size and schema."""
    result = page_of(store_of(request).list_datasets(name), page)
    result["items"] = [dataset_out(d) for d in result["items"]]
    return result


@router.get("/datasets/{name}/{version}", response_model=DatasetOut, tags=["datasets"])
def get_dataset(
    request: Request,
    name: str = Path(..., min_length=1, max_length=200),
    version: str = Path(..., min_length=1, max_length=100),
    _: Principal = require(Role.viewer),
) -> Any:
    """One dataset version."""
    return dataset_out(store_of(request).get_dataset(name, version))


@router.get("/lineage/{kind}/{node_id}", response_model=LineageOut, tags=["lineage"])
def lineage(
    request: Request,
    kind: NodeKind,
    node_id: str = Path(..., min_length=1, max_length=64),
    _: Principal = require(Role.viewer),
) -> Any:
    """Everything upstream and downstream of a node (``kind`` and its store id)."""
    store = store_of(request)
    if kind == "run":
        node_id = store.get_run(node_id).id
    else:
        _check_exists(store, kind, node_id)
    return lineage_out(store.lineage_of((kind, node_id)))


def _check_exists(store: Any, kind: str, node_id: str) -> None:
    ids = {
        "dataset": lambda: {str(d.id) for d in store.list_datasets()},
        "model_version": lambda: {str(v.id) for v in store.list_model_versions()},
        "deployment": lambda: {str(d.id) for d in store.list_deployments()},
    }[kind]()
    if node_id not in ids:
        raise NotFound(f"no {kind} with id {node_id!r}; the list routes show the ids")


class PromoteRequest(BaseModel):
    """Move an alias to a version through the promotion gate."""

    version: int = Field(ge=1, le=2**31)
    max_metric_drop: float = Field(0.005, ge=0.0, description="metric budget vs the holder")
    slo_p99_s: float | None = Field(None, gt=0.0, description="batch-1 p99 latency bound")
    energy_margin: float = Field(0.05, ge=0.0, description="tolerated extra energy")
    force: bool = Field(False, description="move even if the gate refuses (admin only)")


@router.post("/models/{name}/aliases/{alias}/promote", tags=["models"], summary="Gated move")
def promote(
    request: Request,
    body: PromoteRequest,
    name: str = ModelName,
    alias: str = AliasName,
    principal: Principal = require(Role.operator),
) -> Any:
    """Run the promotion gate; the alias moves only on pass (or ``force`` by an admin).

    Answers 200 with the decision when the alias moved, 409 with it when the gate refused;
    both are in the audit log with the figures."""
    from fastapi.responses import JSONResponse

    from kilowatt.store.gates import GatePolicy

    policy = GatePolicy(body.max_metric_drop, body.slo_p99_s, body.energy_margin)
    decision = acting_store(request, principal).promote(
        f"{name}:{body.version}", alias, policy, force=body.force,
        is_admin=principal.role >= Role.admin,
    )  # fmt: skip
    return JSONResponse(decision.as_dict(), status_code=200 if decision.moved else 409)


@router.get("/models/{name}/versions/{version}/variants", tags=["models"])
def version_variants(
    request: Request,
    name: str = ModelName,
    version: int = Version,
    _: Principal = require(Role.viewer),
) -> Any:
    """The newest ``kilowatt optimize`` report of this version (its variants, their figures
    and the Pareto front), or 404 when it was never optimized."""
    store = store_of(request)
    report = store.optimize_report(store.get_model_version(f"{name}:{version}"))
    if report is None:
        raise NotFound(
            f"{name}:{version} was never optimized; run kilowatt optimize {name}:{version}"
        )
    return report
