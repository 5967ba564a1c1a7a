"""The JSON shapes of the API, built from the store's records.

Times are ISO-8601 strings in UTC for people and browsers; sizes in bytes, energy in
joules, money in USD, carbon in grams CO2e, as everywhere in kilowatt.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

__all__ = [
    "ArtifactOut",
    "AuditEventOut",
    "DatasetOut",
    "DeploymentOut",
    "LineageOut",
    "MetricHistoryOut",
    "ModelOut",
    "ModelVersionOut",
    "ProjectOut",
    "RunOut",
    "RunSummary",
    "TokenOut",
    "iso",
]


def iso(epoch_s: float | None) -> str | None:
    """Seconds since the epoch as ISO-8601 UTC, or None."""
    if epoch_s is None:
        return None
    return datetime.fromtimestamp(epoch_s, tz=UTC).isoformat()


def finite(value: float | None) -> float | None:
    """JSON has no NaN or infinity: those become null."""
    if value is None or not math.isfinite(value):
        return None
    return value


class ProjectOut(BaseModel):
    name: str
    created_at: str | None
    runs: int = 0


class RunSummary(BaseModel):
    """What the run used, and how it was measured (``method``)."""

    time_s: float | None = None
    energy_j: float | None = None
    cost_usd: float | None = None
    carbon_gco2e: float | None = None
    method: str | None = None


class RunOut(BaseModel):
    id: str
    project: str
    name: str
    status: str
    user: str
    started_at: str | None
    ended_at: str | None
    duration_s: float | None
    params: dict[str, str]
    tags: dict[str, str]
    env: dict[str, Any]
    summary: RunSummary
    metric_keys: list[str] = Field(default_factory=list)


class MetricHistoryOut(BaseModel):
    """A metric's history as columns; ``downsampled`` says whether points were dropped."""

    key: str
    steps: list[int]
    values: list[float | None]
    times: list[float]
    total_points: int
    downsampled: bool


class ArtifactOut(BaseModel):
    path: str
    sha256: str
    size_bytes: int
    created_at: str | None


class DatasetOut(BaseModel):
    id: int
    name: str
    version: str
    fingerprint: str
    source_url: str | None
    size_bytes: int | None
    num_rows: int | None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    created_at: str | None

    model_config = {"populate_by_name": True}


class ModelVersionOut(BaseModel):
    id: int
    name: str
    version: int
    run_id: str | None
    artifact: str | None
    artifact_sha256: str | None
    signature: dict[str, Any] | None
    aliases: list[str]
    created_at: str | None
    created_by: str


class ModelOut(BaseModel):
    """A model name with its latest version and its aliases (alias -> version)."""

    name: str
    versions: int
    latest_version: int
    aliases: dict[str, int]


class DeploymentOut(BaseModel):
    id: int
    model: str
    version: int
    model_version_id: int
    endpoint: str
    status: str
    created_at: str | None
    updated_at: str | None


class LineageNodeOut(BaseModel):
    id: str
    kind: str
    label: str
    attributes: dict[str, Any]


class LineageEdgeOut(BaseModel):
    source: str
    target: str
    relation: str


class LineageOut(BaseModel):
    """A graph: node ids are ``kind:id``; edges point downstream."""

    root: str
    nodes: list[LineageNodeOut]
    edges: list[LineageEdgeOut]


class AuditEventOut(BaseModel):
    seq: int
    time: str | None
    actor: str
    action: str
    target: str
    details: dict[str, Any]
    hash: str


class TokenOut(BaseModel):
    """A token's record; the secret is shown once, when it is created, and never stored."""

    id: str
    name: str
    role: str
    created_at: str | None
    created_by: str
    revoked_at: str | None
    last_used_at: str | None
    active: bool
