"""Metric points: batched idempotent inserts and a lean columnar history read.

A point is keyed by (run, key, step, writer). Sending the same batch twice stores it once,
and data-parallel ranks (one writer each) logging the same key and step keep one point each.
A writer that logs a key at a step it already logged replaces the value (last write wins).

NaN policy: NaN and +/-inf are stored as logged (a diverging loss is worth keeping) and read
back as NaN and +/-inf. Values that are not real numbers are refused with ``SpecError``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import sqlalchemy as sa

from kilowatt.store import schema as t
from kilowatt.store._base import StoreBase
from kilowatt.store.records import MetricHistory

__all__ = ["MetricPoint", "MetricsMixin"]

# (key, step, time in seconds since the epoch, value)
MetricPoint = tuple[str, int, float, float]

_UPSERT = (
    "INSERT INTO metrics (run_id, key, step, writer, time, value) VALUES ({p}, {p}, {p}, {p}, "
    "{p}, {p}) ON CONFLICT (run_id, key, step, writer) DO UPDATE SET time = excluded.time, "
    "value = excluded.value"
)
_HISTORY = (
    "SELECT step, time, value FROM metrics WHERE run_id = {p} AND key = {p} ORDER BY step, writer"
)


def _placeholder(engine: sa.Engine) -> str:
    return "?" if engine.dialect.paramstyle == "qmark" else "%s"


class MetricsMixin(StoreBase):
    """Writing and reading metric points."""

    def log_metric_points(self, run_id: str, writer: str, points: Sequence[MetricPoint]) -> int:
        """Insert points of one writer in one transaction; safe to retry. Returns the count.

        The run is not checked here (this is the hot path); ``ActiveRun`` checks it once.
        """
        if not points:
            return 0
        sql = _UPSERT.format(p=_placeholder(self._engine))
        rows = [(run_id, key, step, writer, when, value) for key, step, when, value in points]
        with self._write() as connection:
            connection.exec_driver_sql(sql, rows)
        return len(rows)

    def metric_history(self, run_id: str, key: str) -> MetricHistory:
        """Every point of ``key`` in ``run_id`` as numpy columns, sorted by step.

        Reads through the database driver directly (no ORM rows), so a million points take a
        fraction of a second on SQLite.
        """
        sql = _HISTORY.format(p=_placeholder(self._engine))
        raw = self._engine.raw_connection()
        try:
            cursor = raw.cursor()
            cursor.execute(sql, (run_id, key))
            rows = cursor.fetchall()
            cursor.close()
        finally:
            raw.close()
        if not rows:
            empty = np.empty(0)
            return MetricHistory(key, empty.astype(np.int64), empty, empty.copy())
        steps, times, values = zip(*rows, strict=True)
        return MetricHistory(
            key=key,
            step=np.fromiter(steps, dtype=np.int64, count=len(rows)),
            # None is a NaN that SQLite could not store; np.array turns it back into NaN.
            value=np.array(values, dtype=np.float64),
            time=np.fromiter(times, dtype=np.float64, count=len(rows)),
        )

    def metric_keys(self, run_id: str) -> list[str]:
        """The metric keys logged on a run, sorted."""
        query = (
            sa.select(t.metrics.c.key)
            .where(t.metrics.c.run_id == run_id)
            .distinct()
            .order_by(t.metrics.c.key)
        )
        with self._engine.connect() as connection:
            return list(connection.execute(query).scalars())

    def latest_metrics(self, run_id: str) -> dict[str, float]:
        """Each metric's value at its highest step (ties: the latest time)."""
        ranked = sa.select(
            t.metrics.c.key,
            t.metrics.c.value,
            sa.func.row_number()
            .over(
                partition_by=t.metrics.c.key,
                order_by=(t.metrics.c.step.desc(), t.metrics.c.time.desc()),
            )
            .label("rank"),
        ).where(t.metrics.c.run_id == run_id)
        sub = ranked.subquery()
        query = sa.select(sub.c.key, sub.c.value).where(sub.c.rank == 1).order_by(sub.c.key)
        with self._engine.connect() as connection:
            return {
                key: float("nan") if value is None else value
                for key, value in connection.execute(query)
            }

    def count_metric_points(self, run_id: str, key: str | None = None) -> int:
        """How many points a run holds (for one key, or all)."""
        query = (
            sa.select(sa.func.count()).select_from(t.metrics).where(t.metrics.c.run_id == run_id)
        )
        if key is not None:
            query = query.where(t.metrics.c.key == key)
        with self._engine.connect() as connection:
            return int(connection.execute(query).scalar_one())
