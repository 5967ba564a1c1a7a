"""Training specs: how to run a training job (``TrainOptions``) and what to train (``TrainSpec``).

A YAML spec for ``kilowatt train`` names the user's code as ``module:function`` entry points:

    name: tiny-regression
    model: examples.train.tiny:make_model
    optimizer: examples.train.tiny:make_optimizer
    dataset: examples.train.tiny:make_dataset
    loss: examples.train.tiny:loss_fn
    steps: 200
    batch_size: 16
    checkpoint: {every: "50", keep_last: 2}
"""

from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from kilowatt.spec.backend import BackendSpec
from kilowatt.spec.base import Spec
from kilowatt.spec.data import DataSpec

__all__ = [
    "CheckpointSpec",
    "EarlyStopSpec",
    "KeepBestSpec",
    "Precision",
    "TrainOptions",
    "TrainSpec",
    "parse_interval",
    "young_daly_interval_s",
]

Precision = Literal["fp32", "bf16-mixed", "fp16-mixed"]

_ENTRY_POINT = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_INTERVAL = re.compile(r"^(?:(?P<steps>\d+)|(?P<seconds>\d+(?:\.\d+)?)s|(?P<auto>auto))$")


def parse_interval(text: str) -> tuple[Literal["steps", "seconds", "auto"], float]:
    """``"500"`` -> ("steps", 500); ``"90s"`` -> ("seconds", 90.0); ``"auto"`` -> ("auto", 0).

    >>> parse_interval("90s")
    ('seconds', 90.0)
    """
    match = _INTERVAL.match(text.strip())
    if match is None:
        raise ValueError(
            f"checkpoint interval {text!r} is not understood; use steps ('500'), "
            "seconds ('90s') or 'auto'"
        )
    if match["steps"]:
        if int(match["steps"]) == 0:
            raise ValueError("checkpoint interval must be at least 1 step")
        return "steps", float(match["steps"])
    if match["seconds"]:
        return "seconds", float(match["seconds"])
    return "auto", 0.0


def young_daly_interval_s(checkpoint_s: float, mtbf_s: float) -> float:
    """The checkpoint interval that minimises checkpoint time plus work lost to failures.

    Young (1974): ``sqrt(2·C·M)`` for checkpoint cost ``C`` and mean time between
    failures (preemptions) ``M``; less ``C`` when ``C < M/2`` (Daly 2006, first order).
    The planner prices spot runs with it and ``every: auto`` checkpoints by it, so a plan
    and its run agree. No failures (``M`` infinite): never; a free checkpoint: always.

    >>> round(young_daly_interval_s(2.0, 3600.0), 1)
    118.0
    """
    if checkpoint_s <= 0:
        return 0.0
    if math.isinf(mtbf_s):
        return math.inf
    interval_s = math.sqrt(2.0 * checkpoint_s * mtbf_s)
    return interval_s - checkpoint_s if checkpoint_s < mtbf_s / 2 else interval_s


class KeepBestSpec(Spec):
    """Also keep the checkpoint with the best value of ``metric`` (e.g. ``eval_loss``)."""

    metric: str = "eval_loss"
    mode: Literal["min", "max"] = "min"


class CheckpointSpec(Spec):
    """Where and how often to checkpoint.

    Attributes:
        url: a folder or any fsspec URL; default ``<KILOWATT_HOME>/checkpoints/<name>``.
        mirror_url: a second location that receives every checkpoint too.
        every: steps (``"500"``), seconds (``"90s"``) or ``"auto"`` (Young/Daly from the
            measured checkpoint cost and ``expected_preemption_interval_s``).
        keep_last: how many of the newest checkpoints to keep.
        keep_best: also keep the best one by a metric.
        asynchronous: copy state to host memory and write it in a background thread.
        expected_preemption_interval_s: mean time between preemptions, for ``every: auto``.
    """

    url: str | None = None
    mirror_url: str | None = None
    every: str = "auto"
    keep_last: int = Field(default=3, ge=1)
    keep_best: KeepBestSpec | None = None
    asynchronous: bool = True
    expected_preemption_interval_s: float = Field(default=3600.0, gt=0)

    @field_validator("every")
    @classmethod
    def _valid_interval(cls, value: str) -> str:
        parse_interval(value)
        return value


class EarlyStopSpec(Spec):
    """Stop when ``metric`` has not improved by ``min_delta`` for ``patience`` evaluations."""

    metric: str = "eval_loss"
    mode: Literal["min", "max"] = "min"
    patience: int = Field(default=3, ge=1)
    min_delta: float = Field(default=0.0, ge=0)


class TrainOptions(Spec):
    """How kilowatt runs the loop; shared by ``kilowatt.Trainer`` and ``TrainSpec``.

    Attributes:
        steps: optimizer steps to run in total (a resumed run counts the steps already done).
        batch_size: samples per micro-batch on each worker.
        grad_accum: micro-batches per optimizer step (global batch =
            batch_size x grad_accum x workers).
        clip_grad_norm: clip the global gradient norm to this value.
        precision: ``fp32``, ``bf16-mixed`` or ``fp16-mixed`` (fp16 needs CUDA).
        workers: data-parallel processes (torch.distributed; gloo on CPU, NCCL on GPU).
        fsdp: shard parameters with FullyShardedDataParallel instead of DDP.
        device: ``auto`` (CUDA if present), ``cpu`` or ``cuda``.
        seed: seeds Python, NumPy and torch on every rank (rank added to data workers).
        shuffle: shuffle the dataset each epoch (deterministically from the seed).
        eval_every: evaluate every N steps (and at the end) when an eval set is given.
        eval_batches: at most this many eval batches per evaluation.
        early_stop: stop when an eval metric stops improving.
        log_every: emit a step event every N steps (loss is read from the device then).
        resume: ``auto`` (newest valid checkpoint, if any), ``never``, or a checkpoint URL.
        checkpoint: where and how often to checkpoint.
        model_flops_per_sample: training FLOPs per sample (forward + backward), for FLOP/s.
        peak_flops: the devices' peak FLOP/s for MFU (all workers together).
        progress: show a progress bar on rank 0.
        event_log: append every event (start with its ``start_step``, steps, evaluations,
            checkpoints, end) as JSON lines to this local file, from rank 0.
    """

    steps: int = Field(default=100, ge=1)
    batch_size: int = Field(default=32, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    clip_grad_norm: float | None = Field(default=None, gt=0)
    precision: Precision = "fp32"
    workers: int = Field(default=1, ge=1)
    fsdp: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    shuffle: bool = True
    eval_every: int | None = Field(default=None, ge=1)
    eval_batches: int | None = Field(default=None, ge=1)
    early_stop: EarlyStopSpec | None = None
    log_every: int = Field(default=10, ge=1)
    resume: str = "auto"
    checkpoint: CheckpointSpec = CheckpointSpec()
    model_flops_per_sample: float | None = Field(default=None, gt=0)
    peak_flops: float | None = Field(default=None, gt=0)
    progress: bool = True
    event_log: str | None = None


class TrainSpec(TrainOptions):
    """A ``kilowatt train`` job: the user's code as ``module:function`` entry points.

    Entry points and their signatures:
        model: ``() -> torch.nn.Module``.
        optimizer: ``(model) -> torch.optim.Optimizer``.
        dataset: ``() -> Dataset`` (map-style); or ``dataloader``:
            ``(batch_size, rank, world_size) -> iterable of batches``.
        loss: ``(outputs, targets) -> Tensor`` with batches ``(inputs, targets)``; or
            ``training_step``: ``(model, batch) -> Tensor``.
        scheduler: ``(optimizer) -> LRScheduler`` (stepped once per optimizer step).
        eval_dataset: ``() -> Dataset``.
        data: instead of ``dataset``: a versioned data set streamed by ``kilowatt.data``
            (``NAME:VERSION``, a URL, or a ``DataSpec`` mapping).

    Attributes:
        name: the job's name (names the run and the default checkpoint folder).
        project: the tracking project.
        tags: free-form tags recorded on the run.
        model_class: the planner's calibration key (``transformer``, ``cnn``, ``generic``).
        instance: catalog instance for price and power figures.
        region: catalog region for grid intensity and PUE.
        price_usd_per_hour: overrides the catalog price.
        metrics_port: serve Prometheus metrics on 127.0.0.1:PORT while running (0 = any).
        backend: where it runs (``local`` or ``ray``) and its queue and Ray options.
    """

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    project: str = "default"
    tags: dict[str, str] = Field(default_factory=dict)
    model: str
    optimizer: str | None = None
    dataset: str | None = None
    dataloader: str | None = None
    data: DataSpec | None = None
    eval_dataset: str | None = None
    loss: str | None = None
    training_step: str | None = None
    scheduler: str | None = None
    model_class: str = "generic"
    instance: str = "local-cpu"
    region: str = "local"
    price_usd_per_hour: float | None = Field(default=None, ge=0)
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    backend: BackendSpec = BackendSpec()

    @field_validator(
        "model",
        "optimizer",
        "dataset",
        "dataloader",
        "eval_dataset",
        "loss",
        "training_step",
        "scheduler",
    )
    @classmethod
    def _entry_point_form(cls, value: str | None) -> str | None:
        if value is not None and not _ENTRY_POINT.match(value):
            raise ValueError(f"{value!r} is not an entry point; write 'package.module:function'")
        return value

    @model_validator(mode="after")
    def _one_of_each(self) -> TrainSpec:
        sources = [self.dataset, self.dataloader, self.data]
        if sum(source is not None for source in sources) != 1:
            raise ValueError("give exactly one of 'dataset' or 'dataloader' (or 'data')")
        if (self.loss is None) == (self.training_step is None):
            raise ValueError("give exactly one of 'loss' or 'training_step'")
        return self

    def options(self) -> TrainOptions:
        """The loop options of this spec, without the entry points."""
        fields = set(TrainOptions.model_fields)
        return TrainOptions(**{k: v for k, v in self if k in fields})
