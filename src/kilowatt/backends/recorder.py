"""The store-backed training callback: trainer events become run metrics and usage.

The trainer never imports the store; the composer (CLI, backends) creates the run, then
passes ``StoreRecorder(run_id=...)``. The recorder attaches to that run lazily in the
process where events arrive, so it also works inside a spawned rank-0 worker or a Ray
worker (it pickles as plain values).

    >>> run = kilowatt.start_run(project="demo")  # doctest: +SKIP
    >>> trainer = Trainer(..., callbacks=[StoreRecorder(run.id)])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kilowatt.spec import Settings
from kilowatt.store import ActiveRun, start_run
from kilowatt.train.callbacks import (
    Callback,
    CheckpointEvent,
    EvalEvent,
    FitResult,
    FitStart,
    StepEvent,
)

__all__ = ["StoreRecorder", "comparison_metrics"]


def comparison_metrics(prediction: Mapping[str, float], result: FitResult) -> dict[str, float]:
    """``predicted_<x>``, ``measured_<x>`` and ``<x>_ratio`` (measured / predicted) for each
    figure the planner predicted: ``time_s``, ``energy_j``, ``cost_usd``, ``carbon_gco2e``,
    ``samples_per_s``."""
    measured: dict[str, float | None] = {
        "time_s": result.duration_s,
        "samples_per_s": result.samples_per_s,
        "energy_j": result.measurement.energy_j if result.measurement else None,
        "cost_usd": result.account.cost_usd if result.account else None,
        "carbon_gco2e": result.account.carbon_gco2e if result.account else None,
    }
    figures: dict[str, float] = {}
    for key, predicted in prediction.items():
        figures[f"predicted_{key}"] = float(predicted)
        value = measured.get(key)
        if value is not None:
            figures[f"measured_{key}"] = float(value)
            if predicted:
                figures[f"{key}_ratio"] = float(value) / float(predicted)
    return figures


class StoreRecorder(Callback):
    """Writes a run's training events to the tracking store.

    Args:
        run_id: the run to attach to (created by the composer with ``start_run``).
        settings: where the store is (default: from the environment in the worker).
        prediction: the planner's figures for this workload (``time_s``, ``energy_j``, ...),
            logged beside the measured ones at the end.
    """

    def __init__(
        self,
        run_id: str,
        settings: Settings | None = None,
        prediction: Mapping[str, float] | None = None,
    ) -> None:
        self.run_id = run_id
        self.settings = settings
        self.prediction = dict(prediction or {})
        self._run: ActiveRun | None = None

    def __getstate__(self) -> dict[str, Any]:
        # An open run holds a database connection and a thread; workers attach afresh.
        return {**self.__dict__, "_run": None}

    @property
    def run(self) -> ActiveRun:
        """The attached run (attached on first use)."""
        if self._run is None:
            self._run = start_run(run_id=self.run_id, settings=self.settings)
        return self._run

    def on_fit_start(self, event: FitStart) -> None:
        self.run.set_tags(
            {
                "device": event.device,
                "world_size": str(event.world_size),
                "precision": event.precision,
                "start_step": str(event.start_step),
                "parameter_count": str(event.parameter_count),
            }
        )

    def on_step(self, event: StepEvent) -> None:
        self.run.log_metrics(event.metrics(), step=event.step)

    def on_eval(self, event: EvalEvent) -> None:
        self.run.log_metrics(event.metrics, step=event.step)

    def on_checkpoint(self, event: CheckpointEvent) -> None:
        self.run.log_metrics({"checkpoint_stall_s": event.stall_s}, step=event.step)

    def on_fit_end(self, result: FitResult) -> None:
        summary = {f"fit_{k}": v for k, v in result.metrics().items()}
        summary.update(comparison_metrics(self.prediction, result))
        # The loader's totals at the end, so each data_* series ends on the whole fit's figure.
        self.run.log_metrics({**summary, **result.data}, step=result.steps)
        if result.measurement is not None:
            self.run.log_usage(
                time_s=result.duration_s,
                energy_j=result.measurement.energy_j,
                cost_usd=result.account.cost_usd if result.account else None,
                carbon_gco2e=result.account.carbon_gco2e if result.account else None,
                method=result.measurement.method,
            )
        self.close()

    def close(self) -> None:
        """Flush and detach (the run's owner sets its final status)."""
        if self._run is not None:
            self._run.end()
            self._run = None
