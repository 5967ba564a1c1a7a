"""Events the trainer emits, the callback contract, the progress bar and the event log.

The trainer knows nothing about where events go: a composer (the CLI, a backend) passes
callbacks, e.g. the store-backed recorder in ``kilowatt.backends.recorder``. Callbacks run
on rank 0 only; one that raises is logged and skipped, never allowed to kill training.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from kilowatt.meter import Account, Measurement

__all__ = [
    "Callback",
    "CallbackRunner",
    "CheckpointEvent",
    "EvalEvent",
    "EventLog",
    "FitResult",
    "FitStart",
    "ProgressCallback",
    "StepEvent",
]

_log = logging.getLogger("kilowatt.train")


@dataclass(frozen=True)
class FitStart:
    """The run begins (or resumes at ``start_step``)."""

    total_steps: int
    start_step: int
    world_size: int
    global_batch_size: int
    device: str
    precision: str
    params: dict[str, Any]
    parameter_count: int


@dataclass(frozen=True)
class StepEvent:
    """Figures for the steps since the previous event (every ``log_every`` steps).

    Attributes:
        step: optimizer steps done so far.
        epoch: the current pass over the data (0-based).
        loss: mean training loss over the interval (all ranks averaged on rank 0's value).
        lr: learning rate of the first parameter group.
        step_time_s: mean seconds per optimizer step over the interval.
        samples_per_s: global samples per second over the interval.
        flops_per_s: achieved FLOP/s (None unless ``model_flops_per_sample`` is known).
        mfu: achieved / peak FLOP/s (None unless both are known).
        power_w: the job's average power over the interval (None without a meter).
        data: the data loader's figures (``data_*``: bytes and hit rate per cache tier,
            fetch latency, time waited for batches), when it keeps them.
    """

    step: int
    epoch: int
    loss: float
    lr: float
    step_time_s: float
    samples_per_s: float
    flops_per_s: float | None = None
    mfu: float | None = None
    power_w: float | None = None
    data: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """The numeric figures by name, for a tracker."""
        # Plain reads of the fixed figure names: ``asdict`` deep-copies every value, and
        # listing the fields again would be paid on every logged step for nothing.
        named = ((name, getattr(self, name)) for name in _STEP_FIGURES)
        return {name: value for name, value in named if value is not None} | self.data


_STEP_FIGURES = tuple(f.name for f in fields(StepEvent) if f.name not in ("step", "data"))


@dataclass(frozen=True)
class EvalEvent:
    """An evaluation at ``step``: ``metrics`` such as ``eval_loss``."""

    step: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class CheckpointEvent:
    """A checkpoint of ``step`` was started (async) or written (sync) at ``url``."""

    step: int
    url: str
    stall_s: float
    asynchronous: bool
    reason: str  # "interval", "preempted", "final"


@dataclass(frozen=True)
class FitResult:
    """What a ``fit()`` did and cost.

    Attributes:
        steps: optimizer steps completed in total (including steps before a resume).
        start_step: the step this process started from (0, or the resumed checkpoint's).
        final_loss: the training loss of the last logged interval.
        eval_metrics: the last evaluation's metrics.
        duration_s: wall seconds of this process's loop.
        samples: global samples processed by this process's loop.
        samples_per_s: global throughput.
        step_time_s: mean seconds per optimizer step.
        flops_per_s: achieved FLOP/s, where the model's FLOPs are known.
        mfu: model FLOP/s utilisation, where peak FLOP/s is known too.
        peak_memory_bytes: peak device memory (CUDA) or peak resident memory (CPU) of rank 0.
        measurement: time and energy of the loop (with its method).
        account: energy, cost and carbon, when an accountant was given.
        preempted: stopped by SIGTERM/SIGINT after checkpointing.
        stopped_early: stopped by early stopping.
        checkpoint_url: the last checkpoint written, if any.
        checkpoint_stall_s: seconds the loop was blocked by checkpoints in total.
        checkpoints: how many checkpoints this process wrote.
        data: the data loader's figures over the whole fit (``data_*``, as in StepEvent).
    """

    steps: int
    start_step: int
    final_loss: float | None
    eval_metrics: dict[str, float]
    duration_s: float
    samples: int
    samples_per_s: float
    step_time_s: float
    flops_per_s: float | None
    mfu: float | None
    peak_memory_bytes: int
    measurement: Measurement | None
    account: Account | None
    preempted: bool = False
    stopped_early: bool = False
    checkpoint_url: str | None = None
    checkpoint_stall_s: float = 0.0
    checkpoints: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    data: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """Summary figures by name, for a tracker (energy, cost and carbon included)."""
        figures: dict[str, float | None] = {
            "steps": float(self.steps),
            "duration_s": self.duration_s,
            "samples_per_s": self.samples_per_s,
            "step_time_s": self.step_time_s,
            "flops_per_s": self.flops_per_s,
            "mfu": self.mfu,
            "peak_memory_bytes": float(self.peak_memory_bytes),
            "checkpoint_stall_s": self.checkpoint_stall_s,
            "final_loss": self.final_loss,
        }
        if self.measurement is not None:
            figures["energy_j"] = self.measurement.energy_j
        if self.account is not None:
            figures["cost_usd"] = self.account.cost_usd
            figures["carbon_gco2e"] = self.account.carbon_gco2e
        figures.update(self.eval_metrics)
        return {k: v for k, v in figures.items() if v is not None}


class Callback:
    """Receives training events; override the hooks you need."""

    def on_fit_start(self, event: FitStart) -> None:
        """The loop is about to run its first step."""

    def on_step(self, event: StepEvent) -> None:
        """``log_every`` steps have completed."""

    def on_eval(self, event: EvalEvent) -> None:
        """An evaluation finished."""

    def on_checkpoint(self, event: CheckpointEvent) -> None:
        """A checkpoint was taken."""

    def on_fit_end(self, result: FitResult) -> None:
        """The loop ended (completed, stopped early or preempted)."""


class CallbackRunner:
    """Calls every callback's hook; a failing callback is logged and the others still run."""

    def __init__(self, callbacks: Sequence[Callback]) -> None:
        self.callbacks = list(callbacks)

    def emit(self, hook: str, event: Any) -> None:
        """Call ``hook`` (e.g. ``"on_step"``) on every callback with ``event``."""
        for callback in self.callbacks:
            try:
                getattr(callback, hook)(event)
            except Exception:
                _log.exception("callback %s.%s failed; training continues", callback, hook)


class ProgressCallback(Callback):
    """A Rich progress bar with loss, throughput and ETA (only when attached to a terminal)."""

    def __init__(self, console: Any = None) -> None:
        self._console = console
        self._progress: Any = None
        self._task: Any = None

    def on_fit_start(self, event: FitStart) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
            console=self._console,
            transient=False,
        )
        self._task = self._progress.add_task(
            "train", total=event.total_steps, completed=event.start_step, info=""
        )
        self._progress.start()

    def on_step(self, event: StepEvent) -> None:
        if self._progress is None:
            return
        info = f"loss {event.loss:.4g}  {event.samples_per_s:,.0f} samples/s"
        if event.power_w is not None:
            info += f"  {event.power_w:.0f} W"
        self._progress.update(self._task, completed=event.step, info=info)

    def on_fit_end(self, result: FitResult) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=result.steps)
            self._progress.stop()
            self._progress = None


class EventLog(Callback):
    """Appends every event to a file as one JSON line (``{"event": "step", "step": 40, ...}``).

    Each line carries the writing process's id and the wall time, so a log that spans a kill
    and a resume shows which process ran which steps and where the resumed one started
    (the ``fit_start`` line's ``start_step``). A line is written with one ``write`` and
    flushed at once, so a killed process leaves every event before the kill on disk.

        >>> Trainer(..., options=TrainOptions(event_log="events.jsonl"))  # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _append(self, kind: str, fields_: dict[str, Any]) -> None:
        line = json.dumps({"event": kind, "pid": os.getpid(), "time": time.time(), **fields_})
        with self.path.open("a", encoding="utf-8") as log:
            log.write(line + "\n")

    def on_fit_start(self, event: FitStart) -> None:
        self._append("fit_start", asdict(event))

    def on_step(self, event: StepEvent) -> None:
        self._append("step", asdict(event))

    def on_eval(self, event: EvalEvent) -> None:
        self._append("eval", asdict(event))

    def on_checkpoint(self, event: CheckpointEvent) -> None:
        self._append("checkpoint", asdict(event))

    def on_fit_end(self, result: FitResult) -> None:
        outcome = {"steps": result.steps, "start_step": result.start_step}
        outcome.update(preempted=result.preempted, stopped_early=result.stopped_early)
        self._append("fit_end", {**outcome, "metrics": result.metrics()})
