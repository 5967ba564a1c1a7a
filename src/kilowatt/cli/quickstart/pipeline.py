"""The quickstart pipeline: plan, train, register, serve and load-test, report.

Each step composes kilowatt's public pieces: ``kilowatt.make_plan``, ``kilowatt.Trainer`` (via
the spec's entry points) with the store-backed recorder, ``kilowatt.register_model``,
``kilowatt serve`` as a child process, the load generator of ``kilowatt.bench``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kilowatt.cli.quickstart.report import (
    DASHBOARD_COMMAND,
    DASHBOARD_URL,
    QuickstartReport,
    Row,
    finite,
    plan_rows,
    print_report,
    serving_rows,
    training_rows,
)
from kilowatt.cli.quickstart.serving import (
    ServingOutcome,
    load_test,
    predict_one,
    scrape_server_metrics,
)
from kilowatt.cli.quickstart.training import (
    Interrupted,
    TrainingOutcome,
    plan_prediction,
    train_and_register,
)
from kilowatt.cli.quickstart.workload import FAST_STEPS, load_workload
from kilowatt.spec import Settings

__all__ = ["Interrupted", "QuickstartOptions", "run_quickstart"]

_FULL_LOAD_S = 5.0
_FAST_LOAD_S = 1.0


@dataclass(frozen=True)
class QuickstartOptions:
    """How to run the quickstart.

    Attributes:
        example: the example folder (``examples/quickstart``).
        fast: fewer training steps and a 1 s load test per level.
        steps: optimizer steps (overrides the spec and ``fast``).
        load_duration_s: seconds per load level (overrides ``fast``).
    """

    example: Path = Path("examples/quickstart")
    fast: bool = False
    steps: int | None = None
    load_duration_s: float | None = None


def run_quickstart(options: QuickstartOptions, console: Any) -> tuple[QuickstartReport, Path]:
    """Run every step, print the report and write its HTML page; return both.

    Raises:
        Interrupted: Ctrl-C; every process started has been stopped.
        KilowattError: a step failed (the message says which and how to fix it).
    """
    from kilowatt.catalog import load_catalog

    settings = Settings.from_env()
    workload = load_workload(options.example)
    steps = options.steps or (FAST_STEPS if options.fast else workload.train.steps)
    load_s = options.load_duration_s or (_FAST_LOAD_S if options.fast else _FULL_LOAD_S)
    catalog = load_catalog(extra_files=workload.catalog_files, user_dir=settings.catalog_dir)
    clock = _StageClock()

    console.rule("[bold]1/6 plan")
    plan = _plan(workload.plan_for(steps), catalog, settings)
    samples = steps * workload.train.batch_size * workload.train.grad_accum
    prediction = plan_prediction(plan.recommendation, samples)
    clock.lap("plan")

    console.rule("[bold]2/6 train")
    console.print(f"training {workload.train.name}: {steps} steps of {workload.train.batch_size}")
    training = train_and_register(workload, steps, prediction, settings, catalog)
    console.print(f"run {training.run_id}: accuracy {training.accuracy:.1%}")
    clock.lap("train and register")

    console.rule("[bold]3/6 register")
    console.print(
        f"registered {training.model_ref} (run {training.run_id[:8]}, data {training.dataset})"
    )

    console.rule("[bold]4/6 serve and load-test")
    run_dir = settings.home / "quickstart" / training.run_id
    serving = _serve(training, workload, run_dir, load_s, console)
    clock.lap("serve and load-test")

    console.rule("[bold]optimize")
    # A short load test asks for short measurements here too.
    saving = _optimize(training, workload, run_dir, brief=options.fast or load_s < _FAST_LOAD_S)
    clock.lap("optimize")

    console.rule("[bold]5/6 report")
    report = _build_report(workload, training, serving, prediction, plan, settings)
    if saving:
        report.notes.append(f"kilowatt optimize {training.model_ref}: {saving}")
    report.notes.append(clock.summary())
    print_report(report, console)

    console.rule("[bold]6/6 HTML report")
    from kilowatt.cli.quickstart.html import write_html

    path = write_html(report, run_dir / "report.html")
    console.print(f"HTML report: {path}", highlight=False, soft_wrap=True)
    console.print(f"dashboard: run `{DASHBOARD_COMMAND}` and open {DASHBOARD_URL}", highlight=False)
    return report, path


class _StageClock:
    """Wall seconds of each pipeline stage (monotonic clock)."""

    def __init__(self) -> None:
        self._start_s = self._last_s = time.monotonic()
        self.stages_s: dict[str, float] = {}

    def lap(self, stage: str) -> None:
        now = time.monotonic()
        self.stages_s[stage] = now - self._last_s
        self._last_s = now

    def summary(self) -> str:
        parts = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in self.stages_s.items())
        return f"Wall time: {parts} ({time.monotonic() - self._start_s:.1f} s so far)."


def _plan(spec: Any, catalog: Any, settings: Settings) -> Any:
    from kilowatt.cli.plan_cmd import render_plan
    from kilowatt.plan import load_calibration, make_plan

    result = make_plan(
        spec, catalog=catalog, calibration=load_calibration(settings.home / "calibration.json")
    )
    render_plan(result)
    return result


def _serve(
    training: TrainingOutcome, workload: Any, run_dir: Path, load_s: float, console: Any
) -> ServingOutcome:
    from kilowatt.serve.process import ServerProcess
    from kilowatt.store import open_store

    def started(pid: int, endpoint: str) -> None:
        console.print(
            f"server started: kilowatt serve {training.model_ref} (pid {pid}) at {endpoint}",
            highlight=False,
        )

    pixels, truth = workload.module.example_request()
    args = [training.model_ref, "--host", "127.0.0.1", "--threads", "1", "--max-batch-size", "32"]
    server = ServerProcess(args, log_path=run_dir / "serve.log", on_start=started)
    with server:
        answer = predict_one(server.endpoint, pixels)
        console.print(f"load test: 1 and 8 concurrent clients, {load_s:g} s each")
        results = load_test(server.endpoint, pixels, load_s)
        histogram, energy_j, requests = scrape_server_metrics(server.endpoint)
    console.print(f"server stopped: pid {server.pid}, {server.describe_exit()}")
    with open_store() as store:
        mine = [
            d
            for d in store.list_deployments(training.model_ref.partition(":")[0])
            if d.model_version_id == training.model_version_id
        ]
    deployment = (mine[0].id, mine[0].status) if mine else None
    return ServingOutcome(
        endpoint=server.endpoint,
        pid=server.pid,
        exit_code=server.exit_code,
        check=(truth, answer),
        results=results,
        histogram=histogram,
        energy_j=energy_j,
        requests=requests,
        energy_method=_meter_method(),
        deployment=deployment,
    )


def _optimize(training: TrainingOutcome, workload: Any, run_dir: Path, brief: bool) -> str | None:
    """Variants of the registered model measured in joules; the saving of the chosen one
    in words. ``brief`` tries the likeliest few, briefly."""
    from kilowatt.cli.optimize_cmd import optimize_model, saving_line
    from kilowatt.optimize import Effort, OptimizeOptions
    from kilowatt.optimize.evaluation import as_eval_set

    eval_set = as_eval_set(workload.module.make_eval_dataset(), "make_eval_dataset")
    options = OptimizeOptions(
        threads=(1,) if brief else (),
        transforms=("torchscript", "onnx", "onnx-int8-static") if brief else None,
        effort=Effort.quick() if brief else Effort(),
    )
    workdir = run_dir / "optimize"
    # Reported, not registered: the quickstart's registry holds what it trained.
    report = optimize_model(
        training.model_ref, eval_set, "make_eval_dataset", options, workdir, register=False
    )
    return saving_line(report)


def _meter_method() -> str:
    """How ``kilowatt serve`` meters on this machine (it builds the same readers)."""
    from kilowatt.meter import EnergyMeter

    readers = EnergyMeter.for_this_process().readers
    return "+".join(dict.fromkeys(reader.method for reader in readers)) or "unmetered"


def _build_report(
    workload: Any,
    training: TrainingOutcome,
    serving: ServingOutcome,
    prediction: dict[str, float],
    plan: Any,
    settings: Settings,
) -> QuickstartReport:
    from kilowatt.store import open_store

    with open_store(settings) as store:
        loss = store.metric_history(training.run_id, "loss")
        eval_loss = store.metric_history(training.run_id, "eval_loss")
        graph = store.lineage_of(("model_version", str(training.model_version_id)))
    serving_table, serving_summary = serving_rows(serving)
    best = serving.headline
    result = training.result
    account = result.account
    figures = {
        "run_id": training.run_id,
        "model": training.model_ref,
        "accuracy": training.accuracy,
        "train_time_s": result.duration_s,
        "samples_per_s": result.samples_per_s,
        "energy_j": account.energy_j if account else None,
        "cost_usd": account.cost_usd if account else None,
        "carbon_gco2e": account.carbon_gco2e if account else None,
        "planned_time_s": prediction.get("time_s"),
        "serve_p50_s": best.p50_s,
        "serve_p99_s": best.p99_s,
        "serve_throughput_rps": best.throughput_rps,
        "deployment_id": serving.deployment[0] if serving.deployment else None,
    }
    _log_serving(training.run_id, figures, settings)
    return QuickstartReport(
        title=f"kilowatt quickstart: run {training.run_id[:8]} ({workload.train.name})",
        training=training_rows(training),
        plan_vs_measured=plan_rows(prediction, result),
        serving=serving_table,
        serving_summary=serving_summary,
        store=_store_rows(training, serving, graph),
        loss_curve=list(zip(loss.step.tolist(), loss.value.tolist(), strict=True)),
        eval_curve=list(zip(eval_loss.step.tolist(), eval_loss.value.tolist(), strict=True)),
        histogram=serving.histogram,
        figures=figures,
        notes=_notes(training, plan),
    )


def _log_serving(run_id: str, figures: dict[str, Any], settings: Settings) -> None:
    """Add the serving figures to the run, so the dashboard shows them beside training's."""
    from kilowatt.store import start_run

    keys = ("serve_p50_s", "serve_p99_s", "serve_throughput_rps")
    values = {k: figures[k] for k in keys if finite(figures[k])}
    with start_run(run_id=run_id, settings=settings) as run:  # attached: status unchanged
        run.log_metrics(values, step=0)


def _store_rows(training: TrainingOutcome, serving: ServingOutcome, graph: Any) -> list[Row]:
    nodes = sorted(graph.nodes.values(), key=lambda n: _LINEAGE_ORDER.get(n.kind, 9))
    chain = " -> ".join(_node_name(node) for node in nodes)
    deployment = (
        f"#{serving.deployment[0]} ({serving.deployment[1]})" if serving.deployment else "-"
    )
    return [
        Row("run", training.run_id, "kilowatt runs show"),
        Row("data set", training.dataset, "input of the run"),
        Row("model version", training.model_ref, "kilowatt models list"),
        Row("deployment", f"{deployment} at {serving.endpoint}", "recorded by kilowatt serve"),
        Row("lineage", chain, f"kilowatt lineage {training.model_ref}"),
    ]


def _node_name(node: Any) -> str:
    if node.kind == "run":
        return f"run {node.id[:8]}"
    if node.kind == "deployment":
        return f"deployment #{node.id}"
    return str(node.label)


_LINEAGE_ORDER = {"dataset": 0, "run": 1, "model_version": 2, "deployment": 3}


def _notes(training: TrainingOutcome, plan: Any) -> list[str]:
    rec = plan.recommendation
    notes = [
        f"The plan used an MFU of {rec.mfu:.3%} ({rec.mfu_source}) on {rec.accelerators} x "
        f"{rec.accelerator} of the {rec.instance} catalog entry."
    ]
    if training.calibration is not None:
        mfu, runs = training.calibration
        notes.append(
            f"Measured MFU stored for the planner: {mfu:.3%} (mean of {runs} run(s)); the next "
            "quickstart plans with it."
        )
    account = training.result.account
    if account is not None and account.duration_s > 0 and rec.power_w > 0 and rec.energy_j > 0:
        measured_w = account.energy_j / account.duration_s
        far = not 0.5 <= account.energy_j / rec.energy_j <= 2.0
        if far and not 0.5 <= measured_w / rec.power_w <= 2.0:
            notes.append(
                f"The plan's energy assumes the job draws the whole {rec.instance} catalog "
                f"machine ({rec.power_w:.0f} W); the meter attributes to the job only what it "
                f"used ({measured_w:.1f} W, {account.energy_method}), hence the energy ratio."
            )
    if account is not None and account.cost_usd == 0:
        notes.append(
            f"Cost is $0: the catalog prices {rec.instance} (a machine you own) at $0/h; set "
            "price_usd_per_hour in examples/quickstart/digits.yaml to bill it."
        )
    return notes
