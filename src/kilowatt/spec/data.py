"""The ``data:`` section of a training spec: which data set version to stream, and how.

data: digits:v1            # shorthand: NAME:VERSION or a URL

data:
  dataset: s3://bucket/data/digits/v1
  inputs: image            # batches become (batch["image"], batch["label"])
  targets: label
  workers: 2
  disk_cache_mb: 512
  checks: {min_rows: 1000, max_null_fraction: 0.0}
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from kilowatt.spec.base import Spec

__all__ = ["DataChecks", "DataSpec"]


class DataChecks(Spec):
    """Quality checks a data set's statistics must pass before training starts.

    Attributes:
        min_rows: at least this many samples.
        max_null_fraction: no column may have more nulls than this fraction of rows.
        columns: these columns must exist.
    """

    min_rows: int = Field(default=0, ge=0)
    max_null_fraction: float = Field(default=1.0, ge=0.0, le=1.0)
    columns: list[str] = Field(default_factory=list)


class DataSpec(Spec):
    """A versioned data set read through ``kilowatt.data.Loader``.

    Attributes:
        dataset: ``NAME:VERSION`` (under ``KILOWATT_DATA_URL``) or a data set version URL.
        inputs, targets: column names; when given, batches are ``(inputs, targets)`` tuples.
        workers: DataLoader worker processes per rank.
        prefetch_shards: shards fetched ahead in the background.
        fetch_threads: concurrent shard downloads per process.
        shuffle_window: shards whose samples are shuffled together.
        disk_cache_mb: the disk tier's quota (0: no disk tier).
        memory_cache_mb: the memory tier's bound per process.
        cache_aware_order: start each epoch with the shards the cache holds.
        checks: quality checks to pass before training.
    """

    dataset: str = Field(min_length=1)
    inputs: str | None = None
    targets: str | None = None
    workers: int = Field(default=0, ge=0)
    prefetch_shards: int = Field(default=2, ge=0)
    fetch_threads: int = Field(default=2, ge=1)
    shuffle_window: int = Field(default=2, ge=1)
    disk_cache_mb: float = Field(default=1024.0, ge=0)
    memory_cache_mb: float = Field(default=256.0, ge=0)
    cache_aware_order: bool = False
    checks: DataChecks | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"dataset": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _both_or_neither(self) -> DataSpec:
        if (self.inputs is None) != (self.targets is None):
            raise ValueError("give both 'inputs' and 'targets' columns, or neither")
        return self
