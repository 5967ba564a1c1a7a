"""The tracking store: runs, metrics, artifacts, datasets, models, lineage and the audit log.

SQLite in ``KILOWATT_HOME`` by default (WAL mode), any SQLAlchemy URL via
``KILOWATT_STORE_URL``; artifacts through fsspec at ``KILOWATT_ARTIFACTS_URL``.

    >>> import kilowatt
    >>> with kilowatt.start_run(project="demo", params={"lr": 0.1}) as run:  # doctest: +SKIP
    ...     run.log_metrics({"loss": 0.5}, step=1)
    ...     run.log_artifact("model.pt")
    >>> version = kilowatt.register_model("demo", run=run, artifact="model.pt")  # doctest: +SKIP
    >>> kilowatt.lineage(version)  # doctest: +SKIP
"""

from kilowatt.store.audit_key import load_audit_key
from kilowatt.store.audit_witness import AuditWitness, WitnessedHead
from kilowatt.store.records import (
    Artifact,
    AuditEvent,
    Dataset,
    Deployment,
    Job,
    LineageEdge,
    LineageGraph,
    LineageNode,
    MetricHistory,
    ModelVersion,
    Project,
    Run,
    TokenInfo,
    VerifyReport,
)
from kilowatt.store.registry import is_model_ref
from kilowatt.store.store import Store, open_store
from kilowatt.store.tracking import ActiveRun, lineage, register_model, start_run

__all__ = [
    "ActiveRun",
    "Artifact",
    "AuditEvent",
    "AuditWitness",
    "Dataset",
    "Deployment",
    "Job",
    "LineageEdge",
    "LineageGraph",
    "LineageNode",
    "MetricHistory",
    "ModelVersion",
    "Project",
    "Run",
    "Store",
    "TokenInfo",
    "VerifyReport",
    "WitnessedHead",
    "is_model_ref",
    "lineage",
    "load_audit_key",
    "open_store",
    "register_model",
    "start_run",
]
