"""From a training spec's ``data:`` section to a checked ``Loader``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kilowatt.data._dataset import DataSetVersion, open_dataset
from kilowatt.data._storage import Storage
from kilowatt.errors import DataError
from kilowatt.spec.data import DataChecks, DataSpec
from kilowatt.spec.settings import Settings

if TYPE_CHECKING:
    from kilowatt.data._loader import Loader

__all__ = ["check_quality", "loader_from_spec", "storage_from_settings"]

MIB = 1024 * 1024


def storage_from_settings(settings: Settings) -> Storage:
    """Where ``NAME:VERSION`` data sets live, from ``KILOWATT_DATA_URL`` and friends."""
    return Storage(settings.data_root, endpoint_url=settings.s3_endpoint_url)


def loader_from_spec(spec: DataSpec, settings: Settings) -> Loader:
    """The loader a training spec asks for, after its data quality checks pass."""
    from kilowatt.data._loader import Loader

    version = open_dataset(spec.dataset, storage_from_settings(settings))
    if spec.checks is not None:
        check_quality(version, spec.checks)
    pair = (spec.inputs, spec.targets) if spec.inputs and spec.targets else None
    return Loader(
        version,
        num_workers=spec.workers,
        prefetch_shards=spec.prefetch_shards,
        fetch_threads=spec.fetch_threads,
        shuffle_window=spec.shuffle_window,
        cache_dir=settings.data_cache_dir,
        disk_cache_bytes=int(spec.disk_cache_mb * MIB),
        memory_cache_bytes=int(spec.memory_cache_mb * MIB),
        cache_aware_order=spec.cache_aware_order,
        pair=pair,
    )


def check_quality(version: DataSetVersion, checks: DataChecks) -> None:
    """Raise a DataError listing every check the version's statistics fail."""
    stats = version.manifest.stats
    rows = int(stats.get("rows", version.manifest.rows))
    columns = stats.get("columns", {})
    failures = []
    if rows < checks.min_rows:
        failures.append(f"{rows} rows < min_rows {checks.min_rows}")
    for name in checks.columns:
        if name not in columns:
            failures.append(f"column {name!r} is missing")
    for name, column in columns.items():
        fraction = column["nulls"] / rows if rows else 0.0
        if fraction > checks.max_null_fraction:
            failures.append(
                f"column {name!r} is {fraction:.1%} null > max_null_fraction "
                f"{checks.max_null_fraction:.1%}"
            )
    if failures:
        m = version.manifest
        raise DataError(
            f"data set {m.name}:{m.version} fails its checks: {'; '.join(failures)}; fix the "
            "data (a new version) or relax data.checks in the spec"
        )
