"""Metric points: written in packed chunks, read back as numpy columns.

Each call of ``log_metric_points`` stores, per key, one chunk: the points' steps, times and
values packed as little-endian arrays. A point's identity is (run, key, step, writer); when
a writer logs a key at a step again (or a batch is re-sent after an unclear failure), reads
return its newest value once. Data-parallel ranks log as different writers, so each keeps
its own point per step.

NaN policy: NaN and +/-inf are stored as logged (a diverging loss is worth keeping) and read
back as NaN and +/-inf. Values that are not real numbers are refused with ``SpecError``
(see ``ActiveRun.log_metrics``).
"""

from __future__ import annotations

import itertools
import math
import time
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import sqlalchemy as sa

from kilowatt.store import schema as t
from kilowatt.store._base import StoreBase
from kilowatt.store.records import MetricHistory

__all__ = ["MetricPoint", "MetricsMixin", "pack_points", "unpack_chunk"]

# (key, step, time in seconds since the epoch, value)
MetricPoint = tuple[str, int, float, float]
_STEP, _FLOAT = np.dtype("<i8"), np.dtype("<f8")


def _batch_id() -> str:
    # sorts in write order for one writer; unique across processes and restarts
    return f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}"


def pack_points(points: Sequence[MetricPoint]) -> dict[str, Any]:
    """The column values of one chunk holding ``points`` (all of one key)."""
    steps = np.fromiter((p[1] for p in points), dtype=_STEP, count=len(points))
    times = np.fromiter((p[2] for p in points), dtype=_FLOAT, count=len(points))
    values = np.fromiter((p[3] for p in points), dtype=_FLOAT, count=len(points))
    last = int(np.flatnonzero(steps == steps.max())[-1])  # the newest point at the top step
    last_value = float(values[last])
    return {
        "count": len(points),
        "last_step": int(steps[last]),
        "last_time": float(times[last]),
        "last_value": None if math.isnan(last_value) else last_value,
        "data": steps.tobytes() + times.tobytes() + values.tobytes(),
    }


def unpack_chunk(data: bytes, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(steps, times, values)`` of a chunk."""
    steps = np.frombuffer(data, dtype=_STEP, count=count)
    times = np.frombuffer(data, dtype=_FLOAT, count=count, offset=8 * count)
    values = np.frombuffer(data, dtype=_FLOAT, count=count, offset=16 * count)
    return steps, times, values


class MetricsMixin(StoreBase):
    """Writing and reading metric points."""

    def log_metric_points(self, run_id: str, writer: str, points: Sequence[MetricPoint]) -> int:
        """Store points of one writer in one transaction; return how many.

        The run is not checked here (this is the hot path); ``ActiveRun`` checks it once.
        """
        if not points:
            return 0
        batch = _batch_id()
        ordered = sorted(points, key=lambda point: point[0])  # stable: keeps logging order
        rows = [
            {
                "run_id": run_id,
                "key": key,
                "writer": writer,
                "batch": batch,
                **pack_points(list(group)),
            }
            for key, group in itertools.groupby(ordered, key=lambda point: point[0])
        ]
        with self._write() as connection:
            connection.execute(sa.insert(t.metric_chunks), rows)
        return len(points)

    def metric_history(self, run_id: str, key: str) -> MetricHistory:
        """Every point of ``key`` in ``run_id`` as numpy columns, sorted by step then writer.

        A million points take a few tens of milliseconds: they arrive as a few hundred blobs.
        """
        chunks = t.metric_chunks.c
        query = (
            sa.select(chunks.writer, chunks.count, chunks.data)
            .where(chunks.run_id == run_id, chunks.key == key)
            .order_by(chunks.writer, chunks.batch)
        )
        with self._engine.connect() as connection:
            rows = connection.execute(query).all()
        return _merge(key, rows)

    def metric_keys(self, run_id: str) -> list[str]:
        """The metric keys logged on a run, sorted."""
        chunks = t.metric_chunks.c
        query = sa.select(chunks.key).where(chunks.run_id == run_id).distinct().order_by(chunks.key)
        with self._engine.connect() as connection:
            return list(connection.execute(query).scalars())

    def latest_metrics(self, run_id: str) -> dict[str, float]:
        """Each metric's value at its highest step (ties: the latest time)."""
        chunks = t.metric_chunks.c
        rank = sa.func.row_number().over(
            partition_by=chunks.key, order_by=(chunks.last_step.desc(), chunks.last_time.desc())
        )
        ranked = (
            sa.select(chunks.key, chunks.last_value, rank.label("rank"))
            .where(chunks.run_id == run_id)
            .subquery()
        )
        query = sa.select(ranked.c.key, ranked.c.last_value).where(ranked.c.rank == 1)
        with self._engine.connect() as connection:
            return {
                key: math.nan if value is None else value
                for key, value in connection.execute(query.order_by(ranked.c.key))
            }

    def count_metric_points(self, run_id: str, key: str | None = None) -> int:
        """How many distinct points a run holds (for one key, or all)."""
        keys = [key] if key is not None else self.metric_keys(run_id)
        return sum(len(self.metric_history(run_id, name)) for name in keys)


def _merge(key: str, rows: Sequence[Any]) -> MetricHistory:
    if not rows:
        empty = np.empty(0, dtype=_FLOAT)
        return MetricHistory(key, np.empty(0, dtype=np.int64), empty, empty.copy())
    writers = {writer: code for code, writer in enumerate(sorted({row.writer for row in rows}))}
    parts = [unpack_chunk(row.data, row.count) for row in rows]
    steps = np.concatenate([part[0] for part in parts]).astype(np.int64)
    times = np.concatenate([part[1] for part in parts])
    values = np.concatenate([part[2] for part in parts])
    codes = np.concatenate([np.full(row.count, writers[row.writer]) for row in rows])
    # one sort key per identity (step, writer); chunks arrive in write order per writer
    identity = steps * len(writers) + codes
    if np.all(identity[1:] > identity[:-1]):
        keep = slice(None)  # the common case: already sorted, nothing logged twice
    else:
        order = np.argsort(identity, kind="stable")
        ordered = identity[order]
        newest = np.append(ordered[1:] != ordered[:-1], True)  # the last of equal identities
        keep = order[newest]
    return MetricHistory(key, steps[keep], values[keep], times[keep])
