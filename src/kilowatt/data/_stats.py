"""Data quality: per-column statistics at create time, and the shift between two versions."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["ColumnStats", "DataDiff", "compute_stats", "diff_stats"]

HISTOGRAM_BINS = 10
#: Population stability index above which a column's distribution counts as shifted (the
#: usual credit-scoring rule of thumb: < 0.1 stable, 0.1-0.2 moderate, > 0.2 shifted).
PSI_SHIFTED = 0.2


@dataclass
class ColumnStats:
    """Running figures of one column over every shard."""

    type: str
    count: int = 0
    nulls: int = 0
    total: float = 0.0
    minimum: float = math.inf
    maximum: float = -math.inf
    numeric: bool = False

    def add(self, column: pa.ChunkedArray) -> None:
        self.count += len(column)
        self.nulls += column.null_count
        values = _numeric_values(column)
        if values is None or values.size == 0:
            return
        self.numeric = True
        self.total += float(values.sum(dtype=np.float64))
        self.minimum = min(self.minimum, float(values.min()))
        self.maximum = max(self.maximum, float(values.max()))


def compute_stats(tables: Iterable[pa.Table], schema: pa.Schema) -> dict[str, Any]:
    """Schema, rows, and per column: nulls, and for numbers min/max/mean and a histogram.

    Two passes over ``tables`` (a re-iterable, e.g. a list of memory-mapped shards):
    the first finds each column's range, the second fills histograms over it.
    """
    tables = list(tables)
    columns = {f.name: ColumnStats(type=str(f.type)) for f in schema}
    for table in tables:
        for name, stats in columns.items():
            stats.add(table.column(name))
    histograms = {
        name: np.zeros(HISTOGRAM_BINS, dtype=np.int64) for name, s in columns.items() if s.numeric
    }
    for table in tables:
        for name, counts in histograms.items():
            stats = columns[name]
            values = _numeric_values(table.column(name))
            assert values is not None  # numeric columns stay numeric across shards
            counts += np.histogram(values, HISTOGRAM_BINS, (stats.minimum, stats.maximum))[0]
    out: dict[str, Any] = {"rows": sum(t.num_rows for t in tables), "columns": {}}
    for name, stats in columns.items():
        entry: dict[str, Any] = {"type": stats.type, "nulls": stats.nulls}
        if stats.numeric:
            entry |= {
                "min": stats.minimum,
                "max": stats.maximum,
                "mean": stats.total / max(1, int(histograms[name].sum())),
                "histogram": {
                    "edges": [stats.minimum, stats.maximum],
                    "counts": histograms[name].tolist(),
                },
            }
        out["columns"][name] = entry
    return out


def _numeric_values(column: pa.ChunkedArray) -> np.ndarray | None:
    """The column's numbers as one flat array (tensor cells flattened), or None."""
    kind = column.type
    if isinstance(kind, pa.FixedShapeTensorType):
        storage = pa.chunked_array([c.storage for c in column.chunks], kind.storage_type)
        flat = pc.list_flatten(storage)
        return (
            flat.to_numpy()
            if pa.types.is_integer(flat.type) or pa.types.is_floating(flat.type)
            else None
        )
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
        return column.drop_null().to_numpy().astype(np.float64, copy=False)
    return None


@dataclass(frozen=True)
class DataDiff:
    """Schema changes and distribution shift from version A to version B."""

    added: dict[str, str]
    removed: dict[str, str]
    retyped: dict[str, tuple[str, str]]
    rows: tuple[int, int]
    columns: dict[str, dict[str, Any]]

    @property
    def shifted(self) -> list[str]:
        return [name for name, c in self.columns.items() if c.get("psi", 0.0) > PSI_SHIFTED]


def diff_stats(a: Mapping[str, Any], b: Mapping[str, Any]) -> DataDiff:
    """Compare two versions' statistics: columns added, removed, retyped; per shared
    numeric column the change of mean, nulls and the population stability index."""
    cols_a, cols_b = a["columns"], b["columns"]
    added = {k: v["type"] for k, v in cols_b.items() if k not in cols_a}
    removed = {k: v["type"] for k, v in cols_a.items() if k not in cols_b}
    retyped = {
        k: (cols_a[k]["type"], cols_b[k]["type"])
        for k in cols_a.keys() & cols_b.keys()
        if cols_a[k]["type"] != cols_b[k]["type"]
    }
    columns: dict[str, dict[str, Any]] = {}
    for name in sorted(cols_a.keys() & cols_b.keys()):
        x, y = cols_a[name], cols_b[name]
        entry: dict[str, Any] = {"nulls": (x["nulls"], y["nulls"])}
        if "histogram" in x and "histogram" in y:
            entry["mean"] = (x["mean"], y["mean"])
            entry["psi"] = population_stability_index(x["histogram"], y["histogram"])
        columns[name] = entry
    return DataDiff(added, removed, retyped, (a["rows"], b["rows"]), columns)


def population_stability_index(a: Mapping[str, Any], b: Mapping[str, Any]) -> float:
    """PSI = sum (q - p) ln(q / p) over shared bins; each histogram is re-binned onto the
    union of both ranges assuming values spread evenly inside a bin."""
    low = min(a["edges"][0], b["edges"][0])
    high = max(a["edges"][1], b["edges"][1])
    p, q = _rebin(a, low, high), _rebin(b, low, high)
    p, q = np.maximum(p, 1e-4), np.maximum(q, 1e-4)  # empty bins: avoid log(0)
    return float(np.sum((q - p) * np.log(q / p)))


def _rebin(histogram: Mapping[str, Any], low: float, high: float) -> np.ndarray:
    counts = np.asarray(histogram["counts"], dtype=np.float64)
    total = counts.sum()
    target = np.zeros(HISTOGRAM_BINS)
    if total == 0:
        return target
    start, stop = histogram["edges"]
    if high == low:
        target[0] = 1.0
        return target
    if stop == start:  # a constant column: every value in one point
        target[min(HISTOGRAM_BINS - 1, int((start - low) / (high - low) * HISTOGRAM_BINS))] = 1
        return target
    edges = np.linspace(start, stop, len(counts) + 1)
    new_edges = np.linspace(low, high, HISTOGRAM_BINS + 1)
    for count, (left, right) in zip(counts, itertools.pairwise(edges), strict=True):
        overlap = np.clip(
            np.minimum(new_edges[1:], right) - np.maximum(new_edges[:-1], left), 0, None
        )
        target += count * overlap / (right - left)
    return target / total
