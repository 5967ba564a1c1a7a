"""Plain, frozen records the store returns: runs, artifacts, model versions, jobs, ...

Times are seconds since the epoch; ``None`` means "not recorded".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

__all__ = [
    "Artifact",
    "AuditEvent",
    "Dataset",
    "Deployment",
    "Job",
    "JobStatus",
    "LineageEdge",
    "LineageGraph",
    "LineageNode",
    "MetricHistory",
    "ModelVersion",
    "Project",
    "Role",
    "Run",
    "RunStatus",
    "TokenInfo",
    "VerifyReport",
]

RunStatus = Literal["running", "finished", "failed", "killed"]
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled", "timed_out"]
Role = Literal["viewer", "operator", "admin"]


@dataclass(frozen=True)
class Project:
    """A named group of runs."""

    id: int
    name: str
    created_at: float


@dataclass(frozen=True)
class Run:
    """One tracked execution: who ran what, where, with which inputs, and what it cost."""

    id: str
    project: str
    name: str
    status: RunStatus
    user: str
    start_time: float
    end_time: float | None
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    time_s: float | None = None
    energy_j: float | None = None
    cost_usd: float | None = None
    carbon_gco2e: float | None = None
    usage_method: str | None = None


@dataclass(frozen=True)
class MetricHistory:
    """Every point of one metric of one run, as columns sorted by step (then writer).

    ``value`` holds NaN where NaN was logged.
    """

    key: str
    step: np.ndarray  # int64
    value: np.ndarray  # float64
    time: np.ndarray  # float64, seconds since the epoch

    def __len__(self) -> int:
        return int(self.step.shape[0])

    @property
    def last(self) -> float | None:
        """The value at the highest step, or None when nothing was logged."""
        return float(self.value[-1]) if len(self) else None


@dataclass(frozen=True)
class Artifact:
    """A file logged on a run, stored once per content (SHA-256) in the artifact store."""

    id: int
    run_id: str
    name: str
    sha256: str
    size_bytes: int
    created_at: float


@dataclass(frozen=True)
class Dataset:
    """A named, versioned dataset identified by its content fingerprint."""

    id: int
    name: str
    version: str
    fingerprint: str
    source_url: str | None
    size_bytes: int | None
    num_rows: int | None
    schema: dict[str, Any] | None
    created_at: float


@dataclass(frozen=True)
class ModelVersion:
    """A registered version of a model: its source run, artifact, signature and aliases."""

    id: int
    name: str
    version: int
    run_id: str | None
    artifact_name: str | None
    artifact_sha256: str | None
    signature: dict[str, Any] | None
    created_at: float
    created_by: str
    aliases: tuple[str, ...] = ()

    @property
    def ref(self) -> str:
        """``name:version``, the form the CLI accepts."""
        return f"{self.name}:{self.version}"


@dataclass(frozen=True)
class Deployment:
    """A model version served at an endpoint."""

    id: int
    model_version_id: int
    endpoint: str
    status: str
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class LineageNode:
    """One entity in a lineage graph: ``kind`` is dataset, run, model_version or deployment."""

    kind: str
    id: str
    label: str
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.id)


@dataclass(frozen=True)
class LineageEdge:
    """``src`` flowed into ``dst`` (e.g. dataset -input-> run -produced-> model_version)."""

    src: tuple[str, str]
    dst: tuple[str, str]
    relation: str


@dataclass(frozen=True)
class LineageGraph:
    """Everything upstream and downstream of ``root``."""

    root: tuple[str, str]
    nodes: dict[tuple[str, str], LineageNode]
    edges: tuple[LineageEdge, ...]

    def parents(self, key: tuple[str, str]) -> list[LineageNode]:
        """Nodes with an edge into ``key``."""
        return [self.nodes[e.src] for e in self.edges if e.dst == key and e.src in self.nodes]

    def children(self, key: tuple[str, str]) -> list[LineageNode]:
        """Nodes ``key`` has an edge into."""
        return [self.nodes[e.dst] for e in self.edges if e.src == key and e.dst in self.nodes]


@dataclass(frozen=True)
class AuditEvent:
    """One entry of the append-only audit log, chained to the previous by SHA-256."""

    seq: int
    time: float
    actor: str
    action: str
    target: str
    details: dict[str, Any]
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of ``Store.verify_audit()``: ``ok``, or the first bad event and why."""

    ok: bool
    events: int
    first_bad_seq: int | None = None
    reason: str | None = None
    witnessed: int = 0  # exported heads checked against the chain (0: no witness)


@dataclass(frozen=True)
class TokenInfo:
    """An API token (never its secret): who it is for and what it may do."""

    id: str
    name: str
    role: Role
    created_at: float
    created_by: str
    revoked_at: float | None
    last_used_at: float | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class Job:
    """A queued or running job of the local backend, with usage summed over its attempts.

    A ``flexible`` job runs in a window: not before ``not_before`` and, if it cannot start
    in time to end by ``deadline`` (its ``max_runtime_s`` before it), not at all. A rigid
    job starts as soon as the queue reaches it."""

    id: int
    name: str
    spec: dict[str, Any]
    priority: int
    status: JobStatus
    attempts: int
    max_attempts: int
    max_runtime_s: float | None
    devices: list[Any] | None
    pid: int | None
    worker_id: str | None
    run_id: str | None
    log_artifact: str | None
    exit_code: int | None
    error: str | None
    time_s: float
    energy_j: float
    cost_usd: float
    carbon_gco2e: float
    cancel_requested: bool
    submitted_at: float
    started_at: float | None
    finished_at: float | None
    updated_at: float
    created_by: str
    flexible: bool = False
    not_before: float | None = None
    deadline: float | None = None

    def due(self, now: float) -> bool:
        """Whether the job may start at ``now`` (a rigid job always may)."""
        return not self.flexible or self.not_before is None or self.not_before <= now

    @property
    def latest_start(self) -> float | None:
        """The last moment a flexible job can start and still end by its deadline."""
        if not self.flexible or self.deadline is None:
            return None
        return self.deadline - (self.max_runtime_s or 0.0)
