"""The tables of the tracking store (SQLAlchemy Core).

Times are seconds since the epoch (float), sizes bytes, energy joules, money USD, carbon grams
CO2e. JSON-valued columns (accelerators, schemas, signatures, job specs) are stored as text so
SQLite and PostgreSQL hold the same thing. The Alembic migrations in ``migrations/versions``
create exactly these tables; a change here needs a new migration.
"""

from __future__ import annotations

import sqlalchemy as sa

__all__ = ["metadata"]

metadata = sa.MetaData()

projects = sa.Table(
    "projects",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("created_at", sa.Double, nullable=False),
)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("project_id", sa.Integer, nullable=False, index=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("user", sa.String(200), nullable=False),
    sa.Column("start_time", sa.Double, nullable=False),
    sa.Column("end_time", sa.Double),
    sa.Column("git_commit", sa.String(64)),
    sa.Column("git_diff_sha256", sa.String(64)),
    sa.Column("host", sa.String(255)),
    sa.Column("python_version", sa.String(32)),
    sa.Column("torch_version", sa.String(64)),
    sa.Column("cuda_version", sa.String(32)),
    sa.Column("accelerators", sa.Text),
    sa.Column("time_s", sa.Double),
    sa.Column("energy_j", sa.Double),
    sa.Column("cost_usd", sa.Double),
    sa.Column("carbon_gco2e", sa.Double),
    sa.Column("usage_method", sa.String(32)),
)

params = sa.Table(
    "params",
    metadata,
    sa.Column("run_id", sa.String(32), primary_key=True),
    sa.Column("key", sa.String(250), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

tags = sa.Table(
    "tags",
    metadata,
    sa.Column("run_id", sa.String(32), primary_key=True),
    sa.Column("key", sa.String(250), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

# Metric points are stored in chunks: one row per (run, key, writer, flushed batch) holding
# the batch's steps, times and values as packed little-endian arrays (int64, float64,
# float64). A history read then moves a few hundred blobs instead of a million rows. A point
# is identified by (run, key, step, writer): reads keep the newest value per identity, so a
# re-sent batch is stored harmlessly twice and read once, and data-parallel ranks (one
# writer each) never overwrite one another. ``batch`` sorts in write order per writer.
# ``last_*`` describe the point at the chunk's highest step, for latest-value queries.
metric_chunks = sa.Table(
    "metric_chunks",
    metadata,
    sa.Column("run_id", sa.String(32), primary_key=True),
    sa.Column("key", sa.String(250), primary_key=True),
    sa.Column("writer", sa.String(64), primary_key=True),
    sa.Column("batch", sa.String(40), primary_key=True),
    sa.Column("count", sa.Integer, nullable=False),
    sa.Column("last_step", sa.BigInteger, nullable=False),
    sa.Column("last_time", sa.Double, nullable=False),
    sa.Column("last_value", sa.Double),  # NULL holds NaN: SQLite cannot store NaN
    sa.Column("data", sa.LargeBinary, nullable=False),
)

artifacts = sa.Table(
    "artifacts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(32), nullable=False, index=True),
    sa.Column("name", sa.String(500), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False, index=True),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.UniqueConstraint("run_id", "name", name="uq_artifacts_run_name"),
)

datasets = sa.Table(
    "datasets",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("version", sa.String(100), nullable=False),
    sa.Column("fingerprint", sa.String(128), nullable=False),
    sa.Column("source_url", sa.Text),
    sa.Column("size_bytes", sa.BigInteger),
    sa.Column("num_rows", sa.BigInteger),
    sa.Column("schema", sa.Text),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.UniqueConstraint("name", "version", name="uq_datasets_name_version"),
)

model_versions = sa.Table(
    "model_versions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("run_id", sa.String(32)),
    sa.Column("artifact_name", sa.String(500)),
    sa.Column("artifact_sha256", sa.String(64)),
    sa.Column("signature", sa.Text),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("created_by", sa.String(200), nullable=False),
    sa.UniqueConstraint("name", "version", name="uq_model_versions_name_version"),
)

model_aliases = sa.Table(
    "model_aliases",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("alias", sa.String(64), primary_key=True),
    sa.Column("version_id", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
)

deployments = sa.Table(
    "deployments",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model_version_id", sa.Integer, nullable=False, index=True),
    sa.Column("endpoint", sa.String(500), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
)

lineage_edges = sa.Table(
    "lineage_edges",
    metadata,
    sa.Column("src_kind", sa.String(32), primary_key=True),
    sa.Column("src_id", sa.String(64), primary_key=True),
    sa.Column("dst_kind", sa.String(32), primary_key=True),
    sa.Column("dst_id", sa.String(64), primary_key=True),
    sa.Column("relation", sa.String(32), nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Index("ix_lineage_dst", "dst_kind", "dst_id"),
)

audit_events = sa.Table(
    "audit_events",
    metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("time", sa.Double, nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("target", sa.String(500), nullable=False),
    sa.Column("details", sa.Text, nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

# The chain's head, updated in the same transaction as each append: it serialises appends
# (row lock) and lets verify() notice events cut from the end of the log.
audit_head = sa.Table(
    "audit_head",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

api_tokens = sa.Table(
    "api_tokens",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("created_by", sa.String(200), nullable=False),
    sa.Column("revoked_at", sa.Double),
    sa.Column("last_used_at", sa.Double),
)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("max_attempts", sa.Integer, nullable=False),
    sa.Column("max_runtime_s", sa.Double),
    sa.Column("devices", sa.Text),
    sa.Column("pid", sa.Integer),
    sa.Column("worker_id", sa.String(200)),
    sa.Column("run_id", sa.String(32)),
    sa.Column("log_artifact", sa.String(500)),
    sa.Column("exit_code", sa.Integer),
    sa.Column("error", sa.Text),
    sa.Column("time_s", sa.Double, nullable=False),
    sa.Column("energy_j", sa.Double, nullable=False),
    sa.Column("cost_usd", sa.Double, nullable=False),
    sa.Column("carbon_gco2e", sa.Double, nullable=False),
    sa.Column("cancel_requested", sa.Boolean, nullable=False),
    sa.Column("flexible", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("not_before", sa.Double),
    sa.Column("deadline", sa.Double),
    sa.Column("submitted_at", sa.Double, nullable=False),
    sa.Column("started_at", sa.Double),
    sa.Column("finished_at", sa.Double),
    sa.Column("updated_at", sa.Double, nullable=False),
    sa.Column("created_by", sa.String(200), nullable=False),
    sa.Index("ix_jobs_queue", "status", "priority", "id"),
)
