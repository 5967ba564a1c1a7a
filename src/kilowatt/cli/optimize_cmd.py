"""``kilowatt optimize MODEL_REF --eval EVAL`` and ``kilowatt models promote NAME:V``."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from kilowatt.cli.store_cmd import console, open_cli_store
from kilowatt.errors import CatalogError, SpecError
from kilowatt.spec import Settings

__all__ = ["dataset_eval", "optimize_model", "parse_fraction", "register", "saving_line"]

DATASET_PREFIX = "dataset:"
#: Column names tried, in order, when a ``dataset:`` eval does not name its columns.
DEFAULT_INPUTS = ("inputs", "x")
DEFAULT_TARGETS = ("targets", "y", "label")


def register(app: typer.Typer) -> None:
    app.command(no_args_is_help=True)(optimize)
    from kilowatt.cli.models_cmd import models_app

    models_app.command("promote")(promote)


def dataset_eval(ref: str) -> Any:
    """The eval set of ``--eval dataset:NAME:VERSION[:INPUTS,TARGETS]``: two columns of a
    registered data set version, read whole into numpy arrays.

    Without column names, inputs come from ``inputs`` or ``x`` and targets from
    ``targets``, ``y`` or ``label``.

    Raises:
        SpecError: a malformed reference or columns that cannot be guessed.
        DataError: an unknown data set version, or a named column it lacks.
    """
    from kilowatt.data import open_dataset, storage_from_settings
    from kilowatt.optimize import EvalSet

    name, version, columns = _split_dataset_ref(ref)
    found = open_dataset(f"{name}:{version}", storage_from_settings(Settings.from_env()))
    if columns is None:
        have = found.manifest.arrow_schema.names
        columns = (_pick(DEFAULT_INPUTS, have, ref), _pick(DEFAULT_TARGETS, have, ref))
    import numpy as np

    arrays = found.read_arrays(*columns)
    # Arrow hands out read-only views; torch.from_numpy wants arrays it may write to.
    return EvalSet(np.array(arrays[columns[0]]), np.array(arrays[columns[1]]))


def _split_dataset_ref(ref: str) -> tuple[str, str, tuple[str, str] | None]:
    name, _, rest = ref.partition(":")
    version, _, names = rest.partition(":")
    inputs, comma, targets = names.partition(",")
    if not name or not version or (names and not (comma and inputs and targets)):
        raise SpecError(
            f"eval {DATASET_PREFIX}{ref!r} is not {DATASET_PREFIX}NAME:VERSION or "
            f"{DATASET_PREFIX}NAME:VERSION:INPUTS,TARGETS; write e.g. "
            f"{DATASET_PREFIX}digits:v1 or {DATASET_PREFIX}digits:v1:image,label"
        )
    return name, version, (inputs, targets) if names else None


def _pick(candidates: tuple[str, ...], have: list[str], ref: str) -> str:
    for column in candidates:
        if column in have:
            return column
    raise SpecError(
        f"eval {DATASET_PREFIX}{ref}: none of the columns {list(candidates)} is in {have}; "
        f"name them: {DATASET_PREFIX}{ref}:INPUTS,TARGETS"
    )


def parse_fraction(text: str) -> float:
    """``0.5%`` -> 0.005, ``0.005`` -> 0.005; a ``SpecError`` names a bad value.

    >>> parse_fraction("0.5%"), parse_fraction("0.01")
    (0.005, 0.01)
    """
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100.0 if raw.endswith("%") else float(raw)
    except ValueError:
        raise SpecError(f"{text!r} is not a fraction; write e.g. 0.5% or 0.005") from None
    if value < 0:
        raise SpecError(f"{text!r} is negative; a budget is 0 or more")
    return value


def optimize(
    model: str = typer.Argument(..., help="A registered version NAME[:V|@alias] or a model file."),
    eval_ref: str = typer.Option(
        ...,
        "--eval",
        help="dataset:NAME:VERSION[:INPUTS,TARGETS], module:function returning the eval set, "
        "or an .npz file",
    ),
    max_accuracy_drop: str = typer.Option("0.5%", help="accuracy budget vs fp32 (0.5% or 0.005)"),
    slo_p99_ms: float | None = typer.Option(None, help="batch-1 p99 latency bound in ms"),
    objective: str = typer.Option("energy", help="energy | latency | throughput | cost"),
    train: Path | None = typer.Option(
        None, help="training spec: its model factory, and data for pruning and distillation"
    ),
    student: str | None = typer.Option(
        None,
        help="module:function building the distillation student (default: the "
        "teacher with narrower hidden layers)",
    ),
    student_width: float = typer.Option(
        0.5, help="share of each hidden layer's width the derived student keeps"
    ),
    distill_steps: int = typer.Option(1000, help="optimizer steps of the distillation"),
    factory: str | None = typer.Option(None, help="module:function that builds the module"),
    threads: str | None = typer.Option(None, help="intra-op thread counts, e.g. 1,2"),
    transforms: str | None = typer.Option(None, help="only these transforms, comma-separated"),
    quick: bool = typer.Option(False, help="short measurements (ranks, not publishes)"),
    output: Path | None = typer.Option(None, help="keep the variant files in this folder"),
    register_variants: bool = typer.Option(
        True, "--register/--no-register", help="register kept variants of a registered model"
    ),
    serve_spec: Path | None = typer.Option(
        None, help="tune kilowatt serve for the chosen variant; write the best config here"
    ),
    tune_seconds: float = typer.Option(120.0, help="time budget of the serving sweep"),
    tune_concurrency: int = typer.Option(8, help="closed-loop connections of the sweep"),
) -> None:
    """Build and measure model variants in joules; keep the best within the accuracy budget."""
    from kilowatt.optimize import Effort, OptimizeOptions, load_eval, register_eval_source

    register_eval_source(DATASET_PREFIX, dataset_eval)  # optimize knows no data layer

    budget = parse_fraction(max_accuracy_drop)
    spec = _train_spec(train)
    factory = factory or (spec.model if spec else None)
    options = OptimizeOptions(
        max_metric_drop=budget,
        slo_p99_s=slo_p99_ms / 1e3 if slo_p99_ms is not None else None,
        objective=objective,  # type: ignore[arg-type]
        threads=tuple(int(t) for t in threads.split(",")) if threads else (),
        transforms=tuple(transforms.split(",")) if transforms else None,
        effort=Effort.quick() if quick else Effort(),
        finetune=_finetune(spec),
        distill=_distillation(student, student_width, distill_steps),
        factory=factory,
        usd_per_s=_usd_per_s(objective),  # a rented machine's price covers its power too
    )
    eval_set = load_eval(eval_ref)
    with tempfile.TemporaryDirectory(prefix="kilowatt-optimize-") as scratch:
        workdir = output or Path(scratch)
        report = optimize_model(
            model, eval_set, eval_ref, options, workdir, register=register_variants
        )
        if serve_spec is not None and report.chosen is not None:
            slo_s = options.slo_p99_s or 0.1
            _tune(report.chosen, eval_set, serve_spec, slo_s, tune_seconds, tune_concurrency)


def _tune(
    chosen: Any, eval_set: Any, target: Path, slo_s: float, seconds: float, concurrency: int
) -> None:
    """Sweep the serving configuration of the chosen variant; write the best as a spec
    beside a copy of the variant file."""
    import shutil

    import yaml

    from kilowatt.optimize.serving import oip_body, tune_serving
    from kilowatt.spec import ModelSpec, ServeSpec

    target.parent.mkdir(parents=True, exist_ok=True)
    model_file = target.with_name(target.stem + Path(chosen.path).suffix)
    shutil.copyfile(chosen.path, model_file)
    model = ModelSpec(name="model", source=str(model_file.resolve()), **chosen.serve_hints)
    out = console()
    with out.status("tuning kilowatt serve") as status:
        sweep = tune_serving(
            ServeSpec(models=[model]), oip_body(eval_set.inputs[0]), slo_s,
            concurrency=concurrency, time_budget_s=seconds, progress=status.update,
        )  # fmt: skip
    out.print(sweep_table(sweep))
    best = sweep.best
    target.write_text(yaml.safe_dump(json.loads(best.spec.model_dump_json(exclude={"port"}))))
    ratio = sweep.defaults.energy_per_request_j / best.energy_per_request_j
    out.print(
        f"serving: [bold]{best.label}[/] {best.energy_per_request_j * 1e3:.3g} mJ/request vs "
        f"{sweep.defaults.energy_per_request_j * 1e3:.3g} for the defaults ({ratio:.2f}x "
        f"requests per joule; p99 SLO {slo_s * 1e3:g} ms; {sweep.method}); spec: {target}"
    )


def sweep_table(sweep: Any) -> Table:
    """The serving configurations tried, with their figures."""
    table = Table("configuration", "req/s", "p99 ms", "errors", "mJ/request", "SLO",
                  title="serving configurations")  # fmt: skip
    for row in (sweep.default, *sweep.tried, *sweep.confirmed):
        best = " [bold green]best[/]" if row is sweep.best else ""
        rounds = len(row.energy_samples_j)
        label = f"median of {rounds}: {row.label}" if rounds else row.label
        table.add_row(
            label, f"{row.throughput_rps:,.0f}", _ms(row.p99_s), str(row.errors),
            f"{row.energy_per_request_j * 1e3:.3g}", ("met" if row.meets_slo else "missed") + best,
        )  # fmt: skip
    return table


def optimize_model(
    model: str, eval_set: Any, eval_label: str, options: Any, workdir: Path, register: bool = True
) -> Any:
    """Optimize ``model`` (a registered ref or a file), print the variant table and the
    saving, and record a registered model's variants; return the report."""
    from kilowatt.optimize import optimize as run_optimize

    out = console()
    source, parent = _resolve_model(model, workdir)
    module = _load_module(source, options.factory)
    with out.status("optimizing") as status:
        report = run_optimize(module, eval_set, workdir, options, progress=status.update)
    if parent is not None and register:
        _record(report, parent, eval_label, options, workdir)
    out.print(variant_table(report))
    for note in report.notes:
        out.print(f"[dim]{note}[/]")
    _print_saving(report)
    return report


def _train_spec(path: Path | None) -> Any:
    if path is None:
        return None
    from kilowatt.spec import TrainSpec
    from kilowatt.spec.base import load_spec

    return load_spec(TrainSpec, path)


def _finetune(spec: Any) -> Any:
    if spec is None or not spec.dataset or not spec.loss:
        return None
    from kilowatt.optimize import FineTune
    from kilowatt.serve.handler import _import_object

    optimizer = _import_object(spec.optimizer, "optimizer") if spec.optimizer else None
    return FineTune(
        dataset=_import_object(spec.dataset, "dataset"),
        loss=_import_object(spec.loss, "loss"),
        optimizer=optimizer,
        steps=max(20, spec.steps // 10),
        batch_size=spec.batch_size,
    )


def _distillation(student: str | None, width: float, steps: int) -> Any:
    from kilowatt.optimize import Distillation

    try:
        return Distillation(width=width, steps=steps, student=student)
    except ValueError as exc:
        raise SpecError(f"--student-width/--distill-steps: {exc}") from None


def _usd_per_s(objective: str) -> float:
    """This machine's price per second: the catalog's ``local-cpu`` instance, read only for
    the cost objective (a price of 0 would rank every variant the same).

    Raises:
        CatalogError: the catalog cannot be read, has no ``local-cpu`` instance, or prices
            it at 0 (the built-in entry does: a machine you own).
    """
    if objective != "cost":
        return 0.0
    from kilowatt.catalog import load_catalog

    catalog_dir = Settings.from_env().catalog_dir
    fix = (
        f"To fix: add an instance named 'local-cpu' with this machine's price_usd_per_hour "
        f"to a catalog file in {catalog_dir} (it replaces the built-in entry), or choose "
        "another --objective"
    )
    try:
        price = load_catalog(user_dir=catalog_dir).instance("local-cpu").price_usd_per_hour
    except CatalogError as exc:
        raise CatalogError(f"--objective cost needs this machine's price: {exc}. {fix}") from None
    if price <= 0:
        raise CatalogError(
            f"--objective cost needs this machine's price, but the catalog's 'local-cpu' "
            f"instance costs {price} USD/hour, so every variant would cost 0. {fix}"
        )
    return price / 3600.0


def _resolve_model(ref: str, workdir: Path) -> tuple[Path, Any]:
    """The model file, and the registered version it came from (None for a file)."""
    if Path(ref).is_file():
        return Path(ref), None
    from kilowatt.cli.serve_cmd import _registry_spec

    with open_cli_store() as store:
        spec = _registry_spec(ref, Settings.from_env(), store)
        parent = store.get_model_version(ref)
    return Path(spec.source), parent


def _load_module(path: Path, factory: str | None) -> Any:
    """An eager module: the factory's with the file's weights when a factory is known, else
    the file's own module (a TorchScript or torch.export graph)."""
    import torch

    from kilowatt.optimize.candidates import quiet_torch_warnings
    from kilowatt.serve.handler import _detect_format, _import_object

    fmt = _detect_format(path) if path.suffix != ".onnx" else "onnx"
    if fmt == "onnx":
        raise SpecError(f"{path} is already ONNX; optimize starts from a torch model")
    with quiet_torch_warnings():
        if fmt == "export":
            program = torch.export.load(str(path))
            if factory is None:
                return program.module()
            state = program.state_dict
        else:
            scripted = torch.jit.load(str(path), map_location="cpu")
            if factory is None:
                return scripted.eval()
            state = scripted.state_dict()
    module = _import_object(factory, "factory")()
    module.load_state_dict(state)
    return module.eval()


def _record(report: Any, parent: Any, eval_ref: str, options: Any, workdir: Path) -> None:
    """One optimize run: its params, each kept variant registered (lineage parent -> run ->
    variant, with the transform and its parameters), and the report as an artifact."""
    from kilowatt.store import start_run
    from kilowatt.store.gates import REPORT_ARTIFACT

    baseline = report.baseline
    with open_cli_store() as store:
        params = {
            "model": parent.ref, "eval": eval_ref, "max_metric_drop": options.max_metric_drop,
            "slo_p99_s": options.slo_p99_s, "objective": options.objective,
        }  # fmt: skip
        with start_run(
            "optimize", name=f"optimize {parent.ref}", params=params, store=store
        ) as run:
            store.record_optimization(parent, run.id)
            if eval_ref.startswith(DATASET_PREFIX):
                _record_eval_dataset(run, eval_ref)
            if baseline is not None:
                baseline.version = parent.ref
            for row in _rows_to_register(report):
                row.version = _register_variant(store, run, parent, row)
            report_file = workdir / REPORT_ARTIFACT
            report_file.write_text(json.dumps(report.as_dict(), indent=1, default=str))
            run.log_artifact(report_file)


def _record_eval_dataset(run: Any, eval_ref: str) -> None:
    """The lineage edge eval data set -> optimize run."""
    from kilowatt.cli.data_cmd import record_input

    name, version, _columns = _split_dataset_ref(eval_ref[len(DATASET_PREFIX) :])
    record_input(run, f"{name}:{version}", Settings.from_env())


def _rows_to_register(report: Any) -> list[Any]:
    """The best kept row of each variant (a variant is one file, whatever its threads)."""
    from kilowatt.optimize.candidates import BASELINE

    best: dict[str, Any] = {}
    for row in report.kept:
        if row.name == BASELINE:
            continue  # that is the parent itself
        energy = row.figures.energy_per_1000_j
        if row.name not in best or energy < best[row.name].figures.energy_per_1000_j:
            best[row.name] = row
    return list(best.values())


#: What a variant keeps of its parent's signature: how to call it, not its figures.
_SERVING_KEYS = ("input_shape", "input_dtype", "outputs")


def _register_variant(store: Any, run: Any, parent: Any, row: Any) -> str:
    path = Path(row.path)
    artifact = run.log_artifact(path, name=f"variants/{path.name}")
    inherited = {k: v for k, v in (parent.signature or {}).items() if k in _SERVING_KEYS}
    signature = {
        **inherited,
        **row.serve_hints,
        "metric": row.metric,
        "format": row.serve_hints.get("format", "onnx" if path.suffix == ".onnx" else "auto"),
        "transform": row.transform,
        "parameters": row.parameters,
        "threads": row.threads,
        "parent": parent.ref,
    }
    version = store.register_model(
        parent.name, run_id=run.id, artifact=artifact.name, signature=signature
    )
    return str(version.ref)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def variant_table(report: Any) -> Table:
    """The Rich table of every candidate: measured figures, or why it was skipped."""
    table = Table(
        "variant", report.metric_name, "drop", "bytes", "RSS MiB", "p50 ms", "p99 ms",
        "inf/s (batch)", "J/1k inf", "J/1k @1", "", title="model variants",
    )  # fmt: skip
    for row in report.candidates:
        if row.status == "skipped":
            table.add_row(row.label, "-", "-", "-", "-", "-", "-", "-", "-", "-",
                          f"[yellow]skipped: {row.reason}[/]")  # fmt: skip
            continue
        figures = row.figures
        marks = " ".join(
            mark for flag, mark in ((row.chosen, "[bold green]chosen[/]"),
                                    (row.pareto, "pareto"),
                                    (not row.within_budget, "[red]over budget[/]")) if flag
        )  # fmt: skip
        table.add_row(
            row.label, f"{row.metric:.4f}",
            "-" if row.metric_drop is None else f"{row.metric_drop:+.4f}",
            f"{row.bytes_on_disk:,}", f"{figures.rss_bytes / 2**20:.0f}",
            _ms(figures.latency_p50_s), _ms(figures.latency_p99_s),
            f"{figures.throughput_per_s:,.0f} ({figures.best_batch_size})",
            f"{figures.energy_per_1000_j:.3g}", f"{figures.energy_per_1000_batch1_j:.3g}",
            marks + (f" -> {row.version}" if row.version else ""),
        )  # fmt: skip
    return table


def saving_line(report: Any) -> str | None:
    """The chosen variant against fp32 in words (None when nothing was chosen)."""
    chosen, baseline = report.chosen, report.baseline
    if chosen is None or baseline is None:
        return None
    ratio = baseline.figures.energy_per_1000_j / chosen.figures.energy_per_1000_j
    return (
        f"chosen: {chosen.label} ({report.objective}); "
        f"{chosen.figures.energy_per_1000_j:.3g} J per 1,000 inferences vs "
        f"{baseline.figures.energy_per_1000_j:.3g} for {baseline.label}: {ratio:.2f}x "
        f"inferences per joule, {report.metric_name} drop {chosen.metric_drop:+.4f} "
        f"({chosen.figures.energy_method})"
    )


def _print_saving(report: Any) -> None:
    line = saving_line(report)
    if line is not None:
        console().print(line, highlight=False)


def promote(
    ref: str = typer.Argument(..., help="NAME:VERSION to promote."),
    alias: str = typer.Option("production", "--alias", help="the alias to move"),
    max_accuracy_drop: str = typer.Option("0.5%", help="metric budget vs the current holder"),
    slo_p99_ms: float | None = typer.Option(None, help="batch-1 p99 latency bound in ms"),
    energy_margin: str = typer.Option("5%", help="tolerated extra energy per inference"),
    force: bool = typer.Option(False, "--force", help="move even if the gate refuses (admin)"),
) -> None:
    """Move ALIAS to NAME:VERSION if the promotion gate passes; audited either way."""
    from kilowatt.store.gates import GatePolicy

    policy = GatePolicy(
        max_metric_drop=parse_fraction(max_accuracy_drop),
        slo_p99_s=slo_p99_ms / 1e3 if slo_p99_ms is not None else None,
        energy_margin=parse_fraction(energy_margin),
    )
    # The local CLI owns its store (the same trust as the API's local mode: admin).
    with open_cli_store() as store:
        decision = store.promote(ref, alias, policy, force=force, is_admin=True)
    out = console()
    for check in decision.checks:
        verdict = "[green]pass[/]" if check["passed"] else "[red]fail[/]"
        out.print(f"{verdict} {check['check']}: {check['detail']}")
    target = f"{decision.model}@{alias}"
    if decision.moved:
        forced = " (forced past the gate)" if decision.forced and not decision.passed else ""
        out.print(f"{target}: {decision.holder or '(new)'} -> {decision.candidate}{forced}")
        return
    out.print(f"[red]refused[/]: {target} stays at {decision.holder or '(none)'}")
    raise typer.Exit(1)
