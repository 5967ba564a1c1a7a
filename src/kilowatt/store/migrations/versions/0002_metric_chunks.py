"""Store metric points in packed chunks (one row per flushed batch and key), not per point.

Existing points move over: each (run, key, writer) becomes one chunk.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import numpy as np
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_LEGACY_BATCH = "00000000000000000000-migrated"


def upgrade() -> None:
    op.create_table(
        "metric_chunks",
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=250), nullable=False),
        sa.Column("writer", sa.String(length=64), nullable=False),
        sa.Column("batch", sa.String(length=40), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("last_step", sa.BigInteger(), nullable=False),
        sa.Column("last_time", sa.Double(), nullable=False),
        sa.Column("last_value", sa.Double(), nullable=True),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "key", "writer", "batch"),
    )
    _move_points(op.get_bind())
    op.drop_table("metrics")


def _move_points(connection: sa.Connection) -> None:
    groups = connection.execute(sa.text("SELECT DISTINCT run_id, key, writer FROM metrics")).all()
    chunks = sa.table(
        "metric_chunks",
        *(sa.column(name) for name in ("run_id", "key", "writer", "batch", "count")),
        *(sa.column(name) for name in ("last_step", "last_time", "last_value", "data")),
    )
    for run_id, key, writer in groups:
        rows = connection.execute(
            sa.text(
                "SELECT step, time, value FROM metrics WHERE run_id = :r AND key = :k "
                "AND writer = :w ORDER BY step"
            ),
            {"r": run_id, "k": key, "w": writer},
        ).all()
        steps = np.array([row[0] for row in rows], dtype="<i8")
        times = np.array([row[1] for row in rows], dtype="<f8")
        values = np.array([row[2] for row in rows], dtype="<f8")  # None -> NaN
        last = float(values[-1])
        connection.execute(
            sa.insert(chunks).values(
                run_id=run_id,
                key=key,
                writer=writer,
                batch=_LEGACY_BATCH,
                count=len(rows),
                last_step=int(steps[-1]),
                last_time=float(times[-1]),
                last_value=None if np.isnan(last) else last,
                data=steps.tobytes() + times.tobytes() + values.tobytes(),
            )
        )


def downgrade() -> None:
    op.create_table(
        "metrics",
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=250), nullable=False),
        sa.Column("step", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("writer", sa.String(length=64), nullable=False),
        sa.Column("time", sa.Double(), nullable=False),
        sa.Column("value", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("run_id", "key", "step", "writer"),
        sqlite_with_rowid=False,
    )
    _unpack_points(op.get_bind())
    op.drop_table("metric_chunks")


def _unpack_points(connection: sa.Connection) -> None:
    newest: dict[tuple[str, str, int, str], tuple[float, float | None]] = {}
    chunks = connection.execute(
        sa.text(
            "SELECT run_id, key, writer, count, data FROM metric_chunks "
            "ORDER BY run_id, key, writer, batch"
        )
    )
    for run_id, key, writer, count, data in chunks:
        steps = np.frombuffer(data, dtype="<i8", count=count)
        times = np.frombuffer(data, dtype="<f8", count=count, offset=8 * count)
        values = np.frombuffer(data, dtype="<f8", count=count, offset=16 * count)
        for step, when, value in zip(steps.tolist(), times.tolist(), values.tolist(), strict=True):
            newest[(run_id, key, step, writer)] = (when, None if np.isnan(value) else value)
    rows = [
        {"run_id": r, "key": k, "step": s, "writer": w, "time": when, "value": value}
        for (r, k, s, w), (when, value) in newest.items()
    ]
    if rows:
        metrics = sa.table(
            "metrics", *(sa.column(c) for c in ("run_id", "key", "step", "writer", "time", "value"))
        )
        connection.execute(sa.insert(metrics), rows)
