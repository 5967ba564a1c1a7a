"""Where a workload runs: the ``backend`` section of a spec, and queued command jobs.

``backend`` is ``local`` (processes on this machine, through the job queue for
``kilowatt submit``) or ``ray`` (Ray Train, Ray Serve and Ray Jobs on a cluster). A plain
string is accepted as shorthand:

    backend: ray

    backend:
      kind: local
      priority: 5          # higher runs first in the queue
      max_attempts: 3      # a failed job is retried, resuming from its checkpoint
      max_runtime_s: 3600  # stopped and marked timed_out after this long
      accelerators: 1      # CUDA devices assigned exclusively (CUDA_VISIBLE_DEVICES)
      cpu_threads: 4
      flexible: true       # may wait for a window: the start `kilowatt plan` chose
      not_before: 2026-12-01T12:00:00Z
      deadline: 2026-12-01T20:00:00Z

    >>> BackendSpec.model_validate("ray").kind
    'ray'
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from kilowatt.spec.base import Spec

__all__ = ["BackendKind", "BackendSpec", "CommandJobSpec", "RayOptions"]

BackendKind = Literal["local", "ray"]


class RayOptions(Spec):
    """How a workload is laid out on a Ray cluster.

    Attributes:
        cpus_per_worker: CPUs each Ray Train worker (or Serve replica) reserves.
        gpus_per_worker: GPUs each Ray Train worker (or Serve replica) reserves.
        max_failures: Ray Train restarts the worker group this many times after a worker
            dies; each restart resumes from the newest kilowatt checkpoint.
        storage_url: shared storage (a folder every node sees, or an fsspec URL such as
            ``s3://bucket/prefix``) for checkpoints; default: the spec's checkpoint URL.
        min_replicas: Ray Serve autoscaling: fewest replicas.
        max_replicas: Ray Serve autoscaling: most replicas.
        target_ongoing_requests: Ray Serve adds replicas when each has more in flight.
        upscale_delay_s: how long the load must stay high before a replica is added.
        downscale_delay_s: how long the load must stay low before a replica is removed.
        look_back_period_s: Ray Serve averages the load over this many seconds.
    """

    cpus_per_worker: float = Field(1.0, ge=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    max_failures: int = Field(0, ge=-1)
    storage_url: str | None = None
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(2.0, gt=0)
    upscale_delay_s: float = Field(2.0, ge=0)
    downscale_delay_s: float = Field(10.0, ge=0)
    look_back_period_s: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _replicas_ordered(self) -> RayOptions:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas={self.min_replicas} exceeds max_replicas={self.max_replicas}; "
                "raise max_replicas or lower min_replicas"
            )
        return self


class BackendSpec(Spec):
    """Where and how a spec runs (``backend:`` in a TrainSpec, ServeSpec or command job).

    Attributes:
        kind: ``local`` (this machine) or ``ray`` (a Ray cluster).
        address: the Ray cluster (``ray://host:10001`` or ``host:6379``); default
            ``RAY_ADDRESS``, else a local Ray started on demand.
        priority: queue priority for ``kilowatt submit`` (higher runs first).
        max_attempts: runs of a failing job before it is marked failed (retries resume
            from the job's newest checkpoint).
        max_runtime_s: wall seconds per attempt before the job is stopped as timed_out.
        accelerators: CUDA devices the local worker assigns to the job exclusively.
        cpu_threads: CPU threads the job may use (OMP/MKL/torch thread count).
        flexible: the job may wait: the local queue starts it no earlier than
            ``not_before`` and, unless it can still end by ``deadline`` (``max_runtime_s``
            before it is the latest start), marks it timed_out instead of starting it late.
        not_before: earliest start of a flexible job (naive times are UTC).
        deadline: when a flexible job must be done.
        ray: the Ray layout (workers' resources, failures, autoscaling).
    """

    kind: BackendKind = "local"
    address: str | None = None
    priority: int = 0
    max_attempts: int = Field(1, ge=1)
    max_runtime_s: float | None = Field(None, gt=0)
    accelerators: int = Field(0, ge=0)
    cpu_threads: int | None = Field(None, ge=1)
    flexible: bool = False
    not_before: dt.datetime | None = None
    deadline: dt.datetime | None = None
    ray: RayOptions = RayOptions()

    @field_validator("not_before", "deadline")
    @classmethod
    def _utc(cls, value: dt.datetime | None) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)  # naive times are UTC
        return value

    @model_validator(mode="after")
    def _check_window(self) -> BackendSpec:
        if not self.flexible and (self.not_before or self.deadline):
            raise ValueError(
                "not_before and deadline are for flexible jobs (a rigid job starts as soon as "
                "it can); set flexible: true to give the job a window"
            )
        if self.not_before and self.deadline and self.not_before >= self.deadline:
            raise ValueError(
                f"not_before ({self.not_before.isoformat()}) must be before the deadline "
                f"({self.deadline.isoformat()})"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        # ``backend: ray`` is shorthand for ``backend: {kind: ray}``.
        return {"kind": value} if isinstance(value, str) else value


class CommandJobSpec(Spec):
    """A batch job that runs a command (queued locally or sent to the Ray Jobs API).

        name: nightly-eval
        command: ["python", "eval.py", "--split", "test"]
        env: {HF_HOME: /data/hf}
        backend: {priority: 2, max_runtime_s: 600}

    Attributes:
        name: the job's name.
        project: the tracking project of the job's run.
        command: the program and its arguments (a string is split by the shell rules).
        env: extra environment variables.
        instance: catalog instance for price and power figures.
        region: catalog region for grid intensity and PUE.
        backend: where and how it runs.
    """

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    project: str = "default"
    command: list[str] = Field(min_length=1)
    env: dict[str, str] = Field(default_factory=dict)
    instance: str = "local-cpu"
    region: str = "local"
    backend: BackendSpec = BackendSpec()

    @model_validator(mode="before")
    @classmethod
    def _split_command(cls, value: Any) -> Any:
        if isinstance(value, dict) and isinstance(value.get("command"), str):
            import shlex

            return {**value, "command": shlex.split(value["command"])}
        return value
