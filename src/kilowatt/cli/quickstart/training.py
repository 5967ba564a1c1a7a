"""Steps 2 and 3 of the quickstart: train with tracking, evaluate, register the model.

The trainer never sees the store: the run is created here, the example's digits become
a versioned data set (``kilowatt.data``) that is linked to it and that the trainer streams
through a ``Loader``, and the store-backed recorder receives the trainer's events. The
model that is evaluated and registered is read back from the run's final, verified
checkpoint.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kilowatt.cli.quickstart.workload import Workload
from kilowatt.errors import CheckpointError, SpecError
from kilowatt.spec import Settings

__all__ = ["MODEL_NAME", "Interrupted", "TrainingOutcome", "plan_prediction", "train_and_register"]

#: The registry name of the quickstart's model.
MODEL_NAME = "quickstart-digits"
_ARTIFACT = "digits-cnn.pt2"


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) stopped the pipeline; ``detail`` says what was saved."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True)
class TrainingOutcome:
    """What training produced and where the store keeps it.

    Attributes:
        run_id: the tracked run.
        result: the trainer's ``FitResult`` (time, throughput, energy, cost, carbon).
        accuracy: fraction of the held-out set labelled correctly by the final model.
        eval_samples: size of the held-out set.
        model_ref: the registered version, ``name:version``.
        model_version_id: its id (lineage node).
        dataset: the recorded data set (``name:version``).
        calibration: ``(mfu, runs)`` stored for the planner, or None.
    """

    run_id: str
    result: Any
    accuracy: float
    eval_samples: int
    model_ref: str
    model_version_id: int
    dataset: str
    calibration: tuple[float, int] | None


def plan_prediction(recommendation: Any, samples: int) -> dict[str, float]:
    """The planner's figures for the run, keyed as the store recorder logs them."""
    figures = {
        "time_s": float(recommendation.time_s),
        "energy_j": float(recommendation.energy_j),
        "cost_usd": float(recommendation.cost_usd),
        "carbon_gco2e": float(recommendation.carbon_gco2e),
    }
    if recommendation.time_s > 0:
        figures["samples_per_s"] = samples / float(recommendation.time_s)
    return figures


def train_and_register(
    workload: Workload,
    steps: int,
    prediction: dict[str, float],
    settings: Settings,
    catalog: Any,
) -> TrainingOutcome:
    """Train ``steps`` steps in a new tracked run, evaluate, and register the model.

    Raises:
        Interrupted: Ctrl-C or SIGTERM; the trainer checkpointed and the run is ``killed``.
    """
    import torch

    from kilowatt.backends.recorder import StoreRecorder
    from kilowatt.cli.data_cmd import record_input
    from kilowatt.meter import Accountant
    from kilowatt.store import register_model, start_run
    from kilowatt.train.entry import build_trainer

    # The model is far too small for intra-op threads to pay; on a shared 2-core machine
    # they cost more in contention than they give.
    torch.set_num_threads(1)
    spec = workload.train
    accountant = Accountant.from_catalog(
        catalog, spec.instance, spec.region, price_usd_per_hour=spec.price_usd_per_hour
    )
    params = {**spec.model_dump(mode="json", exclude={"tags", "checkpoint"}), "steps": steps}
    run = start_run(
        spec.project, name=spec.name, params=params, tags={"pipeline": "quickstart"},
        settings=settings,
    )  # fmt: skip
    status = "failed"
    try:
        dataset = _dataset_version(workload, settings)
        dataset_ref = f"{dataset.manifest.name}:{dataset.manifest.version}"
        record_input(run, dataset_ref, settings)  # lineage: data set -> run
        checkpoint = {
            **spec.checkpoint.model_dump(),
            "url": str(settings.home / "checkpoints" / spec.name / run.id),
        }
        trainer = build_trainer(
            spec,
            callbacks=[StoreRecorder(run.id, settings, prediction)],
            accountant=accountant,
            steps=steps,
            resume="never",
            checkpoint=checkpoint,
            train_data=_training_loader(workload, dataset, settings),
        )
        result = trainer.fit()
        if result.preempted:
            status = "killed"
            raise Interrupted(
                f"training stopped at step {result.steps} (checkpointed); run {run.id} is killed"
            )
        model = _final_model(workload, result.checkpoint_url or checkpoint["url"])
        eval_set = workload.module.make_eval_dataset()
        accuracy = float(workload.module.accuracy(model, eval_set))
        run.log_metrics({"accuracy": accuracy, "eval_samples": len(eval_set)}, step=result.steps)
        version = _register(run, model, workload, accuracy, register_model)
        calibration = _calibrate(workload, result, catalog, settings)
        status = "finished"
    except KeyboardInterrupt:
        status = "killed"
        raise
    finally:
        run.end(status)  # type: ignore[arg-type]
    return TrainingOutcome(
        run_id=run.id,
        result=result,
        accuracy=accuracy,
        eval_samples=len(eval_set),
        model_ref=version.ref,
        model_version_id=version.id,
        dataset=dataset_ref,
        calibration=calibration,
    )


def _dataset_version(workload: Workload, settings: Settings) -> Any:
    """The example's data as a versioned data set in the home's data store; the same
    content finds the version an earlier run created."""
    from kilowatt.data import create_dataset, storage_from_settings

    name, version, columns = workload.module.dataset_source()
    return create_dataset(columns, name, version, storage_from_settings(settings))


def _training_loader(workload: Workload, version: Any, settings: Settings) -> Any:
    """A ``kilowatt.data.Loader`` over the data set's training rows, as (pixels, label)."""
    from kilowatt.data import Loader

    module = workload.module
    return Loader(
        version,
        filter=module.is_training_sample,
        pair=(module.PIXELS_COLUMN, module.LABEL_COLUMN),
        cache_dir=settings.data_cache_dir,
    )


def _final_model(workload: Workload, checkpoint_url: str) -> Any:
    """The trained model, rebuilt from the newest verified checkpoint of the run."""
    from kilowatt.train import CheckpointManager

    # The URL may name one step's folder; the manager wants the run's checkpoint folder.
    folder = checkpoint_url.rsplit("/step-", 1)[0]
    manager = CheckpointManager(folder)
    info = manager.latest()
    if info is None:
        raise CheckpointError(f"no verified checkpoint in {folder}; rerun kilowatt quickstart")
    state, _ = manager.load(info)
    if state is None or "model" not in state:
        raise CheckpointError(f"checkpoint {info.url} holds no model state")
    model = workload.module.make_model()
    model.load_state_dict(state["model"])
    return model


def _register(run: Any, model: Any, workload: Workload, accuracy: float, register: Any) -> Any:
    """Export the model, log it on the run and register it (lineage: run -> version)."""
    with tempfile.TemporaryDirectory(prefix="kilowatt-quickstart-") as folder:
        path = Path(folder) / _ARTIFACT
        workload.module.export(model, str(path))
        run.log_artifact(path)
    pixels, _ = workload.module.example_request()
    signature = {
        "format": "export",
        "input_shape": [len(pixels)],
        "input_dtype": "FP32",
        "outputs": "10 logits, one per digit",
        "accuracy": accuracy,
    }
    return register(MODEL_NAME, run=run, artifact=_ARTIFACT, signature=signature)


def _calibrate(workload: Workload, result: Any, catalog: Any, settings: Settings) -> Any:
    """Store the achieved fraction of peak, so the next plan of this model predicts from
    measurement instead of the catalog default; ``(mfu, runs)`` or None."""
    from kilowatt.plan.calibration import default_calibration_path, record_measurement

    if not result.flops_per_s:
        return None
    spec = workload.train
    instance = catalog.instance(spec.instance)
    part = catalog.accelerator(instance.accelerator)
    # The planner spreads a CPU job over the instance's cores (one device per GPU worker).
    count = instance.accelerator_count if part.kind == "cpu" else spec.workers
    peak_flops = part.peak_flops("fp32" if spec.precision == "fp32" else "bf16") * count
    try:
        calibration = record_measurement(
            default_calibration_path(settings),
            instance.accelerator,
            spec.model_class,
            achieved_flops=float(result.flops_per_s),
            peak_flops=peak_flops,
        )
    except SpecError:
        return None  # a measurement outside (0, 1] of peak says the catalog is off; skip it
    entry = calibration.entry(instance.accelerator, spec.model_class)
    return (float(entry.mfu), int(entry.samples)) if entry is not None else None
