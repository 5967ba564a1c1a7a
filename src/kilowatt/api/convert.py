"""Store records to API shapes (``kilowatt.api.models``)."""

from __future__ import annotations

from typing import Any

from kilowatt.api.models import (
    ArtifactOut,
    AuditEventOut,
    DatasetOut,
    DeploymentOut,
    LineageEdgeOut,
    LineageNodeOut,
    LineageOut,
    ModelVersionOut,
    RunOut,
    RunSummary,
    TokenOut,
    finite,
    iso,
)

__all__ = [
    "artifact_out",
    "audit_out",
    "dataset_out",
    "deployment_out",
    "lineage_out",
    "node_id",
    "run_out",
    "token_out",
    "version_out",
]


def run_out(run: Any, metric_keys: list[str] | None = None) -> RunOut:
    """A ``kilowatt.store`` run as the API shows it."""
    duration_s = run.end_time - run.start_time if run.end_time is not None else run.time_s
    return RunOut(
        id=run.id, project=run.project, name=run.name, status=run.status, user=run.user,
        started_at=iso(run.start_time), ended_at=iso(run.end_time),
        duration_s=finite(duration_s), params=dict(run.params), tags=dict(run.tags),
        env=dict(run.environment),
        summary=RunSummary(
            time_s=finite(run.time_s), energy_j=finite(run.energy_j),
            cost_usd=finite(run.cost_usd), carbon_gco2e=finite(run.carbon_gco2e),
            method=run.usage_method,
        ),
        metric_keys=metric_keys or [],
    )  # fmt: skip


def artifact_out(artifact: Any) -> ArtifactOut:
    return ArtifactOut(
        path=artifact.name, sha256=artifact.sha256, size_bytes=artifact.size_bytes,
        created_at=iso(artifact.created_at),
    )  # fmt: skip


def dataset_out(dataset: Any) -> DatasetOut:
    return DatasetOut(
        id=dataset.id, name=dataset.name, version=dataset.version,
        fingerprint=dataset.fingerprint, source_url=dataset.source_url,
        size_bytes=dataset.size_bytes, num_rows=dataset.num_rows, schema=dataset.schema,
        created_at=iso(dataset.created_at),
    )  # fmt: skip


def version_out(version: Any) -> ModelVersionOut:
    return ModelVersionOut(
        id=version.id, name=version.name, version=version.version, run_id=version.run_id,
        artifact=version.artifact_name, artifact_sha256=version.artifact_sha256,
        signature=version.signature, aliases=list(version.aliases),
        created_at=iso(version.created_at), created_by=version.created_by,
    )  # fmt: skip


def deployment_out(deployment: Any, version: Any) -> DeploymentOut:
    return DeploymentOut(
        id=deployment.id, model=version.name if version else "?",
        version=version.version if version else 0,
        model_version_id=deployment.model_version_id, endpoint=deployment.endpoint,
        status=deployment.status, created_at=iso(deployment.created_at),
        updated_at=iso(deployment.updated_at),
    )  # fmt: skip


def node_id(key: tuple[str, str]) -> str:
    """A lineage node key as one string, ``kind:id``."""
    return f"{key[0]}:{key[1]}"


def lineage_out(graph: Any) -> LineageOut:
    nodes = [
        LineageNodeOut(
            id=node_id(key), kind=node.kind, label=node.label, attributes=dict(node.attributes)
        )
        for key, node in graph.nodes.items()
    ]
    edges = [
        LineageEdgeOut(source=node_id(edge.src), target=node_id(edge.dst), relation=edge.relation)
        for edge in graph.edges
    ]
    return LineageOut(root=node_id(graph.root), nodes=nodes, edges=edges)


def audit_out(event: Any) -> AuditEventOut:
    return AuditEventOut(
        seq=event.seq, time=iso(event.time), actor=event.actor, action=event.action,
        target=event.target, details=dict(event.details), hash=event.hash,
    )  # fmt: skip


def token_out(info: Any) -> TokenOut:
    return TokenOut(
        id=info.id, name=info.name, role=info.role, created_at=iso(info.created_at),
        created_by=info.created_by, revoked_at=iso(info.revoked_at),
        last_used_at=iso(info.last_used_at), active=info.active,
    )  # fmt: skip
