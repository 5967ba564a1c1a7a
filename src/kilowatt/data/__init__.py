"""Versioned data sets (Arrow IPC shards + a manifest), a tiered shard cache with
future-aware eviction, and a resumable streaming loader.

    >>> from kilowatt.data import Loader, Storage, create_dataset
    >>> storage = Storage("/tmp/kw-data")
    >>> create_dataset({"x": [1.0, 2.0], "y": [0, 1]}, "toy", "v1", storage)  # doctest: +SKIP
    >>> for batch in Loader("toy:v1", storage, batch_size=2):  # doctest: +SKIP
    ...     batch["x"], batch["y"]

The loader (and so torch) is imported only when ``Loader`` or ``ShardStream`` is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kilowatt.data._cache import AccessPlan, CacheStats, ShardCache
from kilowatt.data._dataset import (
    DataSetVersion,
    VerifyReport,
    create_dataset,
    delete_dataset,
    list_versions,
    open_dataset,
    verify_dataset,
)
from kilowatt.data._manifest import Manifest, ShardInfo
from kilowatt.data._spec import check_quality, loader_from_spec, storage_from_settings
from kilowatt.data._stats import DataDiff, diff_stats
from kilowatt.data._storage import Storage

if TYPE_CHECKING:
    from kilowatt.data._loader import (
        Loader,
        LoaderOptions,
        LoaderStats,
        ShardStream,
        prefetch_batches,
    )

__all__ = [
    "AccessPlan",
    "CacheStats",
    "DataDiff",
    "DataSetVersion",
    "Loader",
    "LoaderOptions",
    "LoaderStats",
    "Manifest",
    "ShardCache",
    "ShardInfo",
    "ShardStream",
    "Storage",
    "VerifyReport",
    "check_quality",
    "create_dataset",
    "delete_dataset",
    "diff_stats",
    "list_versions",
    "loader_from_spec",
    "open_dataset",
    "prefetch_batches",
    "storage_from_settings",
    "verify_dataset",
]

_LAZY = {"Loader", "LoaderOptions", "LoaderStats", "ShardStream", "prefetch_batches"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from kilowatt.data import _loader

        return getattr(_loader, name)
    raise AttributeError(f"module 'kilowatt.data' has no attribute {name!r}")
