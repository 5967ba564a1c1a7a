"""``kilowatt train SPEC.yaml`` and ``kilowatt profile SPEC.yaml``.

``train`` runs a spec with checkpoints, resume and metering, records the run in the store
with the planner's prediction beside the measurement, and exits with ``EXIT_PREEMPTED``
(75) after a SIGTERM/SIGINT checkpoint, so a scheduler knows to requeue it with
``--resume auto``. ``profile`` runs a few steps, reports step time, throughput and peak
memory, and stores the achieved fraction of peak FLOP/s as a planner calibration.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from kilowatt.errors import SpecError

__all__ = ["predict", "register"]


def register(app: typer.Typer) -> None:
    @app.command()
    def train(
        spec_path: Path = typer.Argument(..., metavar="SPEC.yaml", help="A TrainSpec file."),
        resume: str | None = typer.Option(
            None, help="auto (newest valid checkpoint), never, or a checkpoint URL."
        ),
        steps: int | None = typer.Option(None, min=1, help="Override the spec's steps."),
        workers: int | None = typer.Option(None, min=1, help="Data-parallel processes."),
        metrics_port: int | None = typer.Option(
            None, help="Serve Prometheus metrics on 127.0.0.1:PORT while training."
        ),
        track: bool = typer.Option(True, help="Record the run in the tracking store."),
        progress: bool = typer.Option(True, help="Show a progress bar."),
        catalog_files: list[Path] = typer.Option(
            [], "--catalog", help="Extra catalog file(s) adding or overriding entries."
        ),
    ) -> None:
        """Train a model from a spec; checkpoints, resume, metering and tracking included.

        Exit codes: 0 done, 1 error, 75 preempted (checkpointed; rerun with --resume auto).
        """
        overrides = {
            k: v
            for k, v in {"resume": resume, "steps": steps, "workers": workers}.items()
            if v is not None
        }
        if not progress:
            overrides["progress"] = False
        raise typer.Exit(_run_train(spec_path, overrides, metrics_port, track, catalog_files))

    @app.command()
    def profile(
        spec_path: Path = typer.Argument(..., metavar="SPEC.yaml", help="A TrainSpec file."),
        steps: int = typer.Option(10, min=3, help="Steps to measure (the first is warm-up)."),
        model_class: str | None = typer.Option(
            None, help="Calibration key (default: the spec's model_class)."
        ),
        accelerator: str | None = typer.Option(
            None, help="Catalog accelerator measured (default: the spec instance's)."
        ),
        catalog_files: list[Path] = typer.Option(
            [], "--catalog", help="Extra catalog file(s) adding or overriding entries."
        ),
    ) -> None:
        """Measure a few steps and store the achieved fraction of peak for the planner."""
        _run_profile(spec_path, steps, model_class, accelerator, catalog_files)


def _context(spec_path: Path, catalog_files: Sequence[Path] = ()) -> tuple[Any, Any, Any]:
    from kilowatt.catalog import load_catalog
    from kilowatt.spec import Settings, TrainSpec, load_spec

    settings = Settings.from_env()
    spec = load_spec(TrainSpec, spec_path)
    catalog = load_catalog(extra_files=catalog_files, user_dir=settings.catalog_dir)
    return settings, spec, catalog


def _run_train(
    spec_path: Path,
    overrides: dict[str, Any],
    metrics_port: int | None,
    track: bool,
    catalog_files: Sequence[Path] = (),
) -> int:
    from kilowatt.meter import Accountant
    from kilowatt.train import EXIT_PREEMPTED
    from kilowatt.train.metrics import PrometheusCallback

    settings, spec, catalog = _context(spec_path, catalog_files)
    accountant = Accountant.from_catalog(
        catalog, spec.instance, spec.region, price_usd_per_hour=spec.price_usd_per_hour
    )
    callbacks: list[Any] = []
    port = metrics_port if metrics_port is not None else spec.metrics_port
    if port is not None:
        callbacks.append(PrometheusCallback(port=port))
    run = None
    if track:
        from kilowatt.backends.recorder import StoreRecorder
        from kilowatt.store import start_run

        run = start_run(
            spec.project,
            name=spec.name,
            params=spec.model_dump(mode="json", exclude={"tags"}),
            tags=spec.tags,
            settings=settings,
        )
        if spec.data is not None:  # lineage: data set -> run
            from kilowatt.cli.data_cmd import record_input

            record_input(run, spec.data.dataset, settings)
        prediction = predict(spec, catalog, overrides, settings)
        callbacks.append(StoreRecorder(run.id, settings, prediction))
    status = "failed"
    try:
        from kilowatt.backends import get_backend

        # The spec's backend (local processes or a Ray cluster) runs the same trainer.
        backend = get_backend(spec.backend.kind, settings=settings, address=spec.backend.address)
        result = backend.train(spec, callbacks=callbacks, accountant=accountant, **overrides)
        status = "killed" if result.preempted else "finished"
    finally:
        if run is not None:
            run.end(status)  # type: ignore[arg-type]
    _print_result(result, run.id if run else None)
    return EXIT_PREEMPTED if result.preempted else 0


def predict(
    spec: Any, catalog: Any, overrides: dict[str, Any], settings: Any = None
) -> dict[str, float]:
    """The planner's figures for this job (``time_s``, ``energy_j``, ``cost_usd``,
    ``carbon_gco2e``, ``samples_per_s``, ``mfu``), or {} without the model's FLOPs."""
    if spec.model_flops_per_sample is None:
        return {}
    from kilowatt.plan import predict_training
    from kilowatt.plan.calibration import default_calibration_path, load_calibration

    options = spec.options().model_copy(update=overrides)
    samples = options.steps * options.batch_size * options.grad_accum * options.workers
    instance = catalog.instance(spec.instance)
    part = catalog.accelerator(instance.accelerator)
    # A CPU job spreads over the instance's cores; a GPU job uses one device per worker.
    count = instance.accelerator_count if part.kind == "cpu" else options.workers
    share = count / instance.accelerator_count
    price = spec.price_usd_per_hour
    prediction = predict_training(
        spec.model_flops_per_sample * samples,
        part,
        count=count,
        precision=_plan_precision(options.precision),
        region=catalog.region(spec.region),
        price_usd_per_hour=(instance.price_usd_per_hour if price is None else price) * share,
        model_class=spec.model_class,
        calibration=load_calibration(default_calibration_path(settings)),
        catalog=catalog,
    )
    figures = {
        key: float(getattr(prediction, key))
        for key in ("time_s", "energy_j", "cost_usd", "carbon_gco2e", "mfu")
    }
    if figures["time_s"] > 0:
        figures["samples_per_s"] = samples / figures["time_s"]
    return {k: v for k, v in figures.items() if math.isfinite(v)}


def _plan_precision(precision: str) -> str:
    return {"fp32": "fp32", "bf16-mixed": "bf16", "fp16-mixed": "fp16"}[precision]


def _print_result(result: Any, run_id: str | None) -> None:
    rows = [
        ("steps", f"{result.steps} (from {result.start_step})"),
        ("wall time", f"{result.duration_s:.2f} s"),
        ("throughput", f"{result.samples_per_s:,.1f} samples/s"),
        ("step time", f"{result.step_time_s * 1e3:.2f} ms"),
        ("peak memory", f"{result.peak_memory_bytes / 2**20:,.0f} MiB"),
        ("final loss", "-" if result.final_loss is None else f"{result.final_loss:.4g}"),
    ]
    rows += [(k, f"{v:.4g}") for k, v in result.eval_metrics.items()]
    if result.flops_per_s is not None:
        rows.append(("achieved FLOP/s", f"{result.flops_per_s:.3g}"))
    if result.mfu is not None:
        rows.append(("MFU", f"{result.mfu:.1%}"))
    if result.measurement is not None:
        energy = result.measurement
        rows.append(("energy", f"{energy.energy_j:.1f} J ({energy.method})"))
    if result.account is not None:
        rows.append(("cost", f"${result.account.cost_usd:.6f} ({result.account.cost_method})"))
        rows.append(("carbon", f"{result.account.carbon_gco2e:.4f} gCO2e"))
    stall = f"stall {result.checkpoint_stall_s:.3f} s"
    rows.append(("checkpoint", f"{result.checkpoint_url} ({stall})"))
    if result.preempted:
        rows.append(("status", "preempted: checkpointed; rerun with --resume auto"))
    if result.stopped_early:
        rows.append(("status", "stopped early"))
    if run_id is not None:
        rows.append(("run", run_id))
    table = Table(title="training run", show_header=False)
    for key, value in rows:
        table.add_row(key, value)
    Console().print(table)


class _StepTimes:
    """Collects the step time of every step event (``profile`` logs every step)."""

    def __init__(self) -> None:
        self.step_times_s: list[float] = []

    def on_step(self, event: Any) -> None:
        self.step_times_s.append(event.step_time_s)

    def on_fit_start(self, event: Any) -> None:
        """Nothing to do before the first step."""

    def on_eval(self, event: Any) -> None:
        """Profiling does not evaluate."""

    def on_checkpoint(self, event: Any) -> None:
        """Checkpoint stalls are reported by ``kilowatt train``."""

    def on_fit_end(self, result: Any) -> None:
        """The caller reads ``step_times_s``."""


def _run_profile(
    spec_path: Path,
    steps: int,
    model_class: str | None,
    accelerator: str | None,
    catalog_files: Sequence[Path] = (),
) -> None:
    from kilowatt.plan.calibration import default_calibration_path, record_measurement
    from kilowatt.train.entry import build_trainer

    settings, spec, catalog = _context(spec_path, catalog_files)
    seen = _StepTimes()
    trainer = build_trainer(
        spec,
        callbacks=[seen],
        steps=steps,
        resume="never",
        workers=1,
        eval_every=None,
        progress=False,
        log_every=1,
        checkpoint={"url": str(settings.home / "profile" / spec.name), "every": "auto"},
    )
    result = trainer.fit()
    # The first step pays for lazy initialisation and allocator warm-up; it is not typical.
    step_time_s = statistics.median(seen.step_times_s[1:])
    samples_per_s = result.samples / (result.steps - result.start_step) / step_time_s
    table = Table(title=f"profile of {spec.name}", show_header=False)
    table.add_row("step time", f"{step_time_s * 1e3:.3f} ms (median of {steps - 1} steps)")
    table.add_row("throughput", f"{samples_per_s:,.1f} samples/s")
    table.add_row("peak memory", f"{result.peak_memory_bytes / 2**20:,.0f} MiB")
    if spec.model_flops_per_sample is None:
        Console().print(table)
        raise SpecError(
            f"{spec_path}: model_flops_per_sample is not set, so the achieved fraction of "
            "peak cannot be computed; add it to the spec to store a calibration"
        )
    instance = catalog.instance(spec.instance)
    accelerator = accelerator or instance.accelerator
    peak_flops = _peak_flops(catalog, instance, accelerator, spec.precision)
    achieved_flops = spec.model_flops_per_sample * samples_per_s
    path = default_calibration_path(settings)
    model_class = model_class or spec.model_class
    record_measurement(
        path, accelerator, model_class, achieved_flops=achieved_flops, peak_flops=peak_flops
    )
    table.add_row("achieved FLOP/s", f"{achieved_flops:.3g}")
    table.add_row("fraction of peak", f"{min(achieved_flops / peak_flops, 1.0):.3%}")
    table.add_row("calibration", f"{accelerator}/{model_class} saved to {path}")
    Console().print(table)


def _peak_flops(catalog: Any, instance: Any, accelerator: str, precision: str) -> float:
    entry = catalog.accelerator(accelerator)
    # A cpu entry describes one core; an instance's accelerator_count is its cores.
    return entry.peak_flops(_plan_precision(precision)) * instance.accelerator_count
