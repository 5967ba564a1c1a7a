"""``kilowatt runs list|show|compare|export|delete``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import typer
from rich.table import Table

from kilowatt.cli.store_cmd import console, open_cli_store, when
from kilowatt.errors import SpecError

runs_app = typer.Typer(name="runs", help="List, inspect, compare and export runs.")
runs_app.no_args_is_help = True
_OPERATORS = ("<=", ">=", "!=", "==", "<", ">", "=")


def register(app: typer.Typer) -> None:
    app.add_typer(runs_app)


def parse_pairs(pairs: Sequence[str], option: str) -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}``."""
    parsed = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SpecError(f"{option} {pair!r} must look like KEY=VALUE")
        parsed[key] = value
    return parsed


def parse_metric_filter(text: str) -> tuple[str, str, float]:
    """``"loss<0.5"`` -> ``("loss", "<", 0.5)``."""
    for operator in _OPERATORS:
        key, sep, value = text.partition(operator)
        if sep and key.strip():
            try:
                return key.strip(), operator, float(value)
            except ValueError:
                break
    raise SpecError(f"--metric {text!r} must look like KEY<NUMBER (operators: <, <=, >, >=, =, !=)")


def _number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if math.isnan(value):
        return "nan"
    return f"{value:.4g}{unit}"


@runs_app.command("list")
def runs_list(
    project: str | None = typer.Option(None, help="Only runs of this project."),
    status: str | None = typer.Option(None, help="running, finished, failed or killed."),
    tag: list[str] = typer.Option([], help="KEY=VALUE a run's tags must have (repeatable)."),
    param: list[str] = typer.Option([], help="KEY=VALUE a run's params must have (repeatable)."),
    metric: list[str] = typer.Option([], help="Latest-value filter like 'loss<0.5' (repeatable)."),
    limit: int = typer.Option(50, min=1, help="Show at most this many runs."),
) -> None:
    """List runs, newest first."""
    filters = [parse_metric_filter(text) for text in metric]
    with open_cli_store() as store:
        runs = store.list_runs(
            project,
            status=status,
            tags=parse_pairs(tag, "--tag"),  # type: ignore[arg-type]
            params=parse_pairs(param, "--param"),
            metrics=filters,
            limit=limit,
        )
    table = Table("id", "project", "name", "status", "started (UTC)", "time_s", "energy_j", "user")
    for run in runs:
        table.add_row(
            run.id[:12],
            run.project,
            run.name,
            run.status,
            when(run.start_time),
            _number(_duration(run)),
            _number(run.energy_j),
            run.user,
        )
    console().print(table)


def _duration(run: Any) -> float | None:
    if run.time_s is not None:
        return float(run.time_s)
    return None if run.end_time is None else run.end_time - run.start_time


@runs_app.command("show")
def runs_show(run_id: str = typer.Argument(..., help="Run id (or a unique prefix).")) -> None:
    """Show a run: status, environment, params, tags, latest metrics, usage and artifacts."""
    with open_cli_store() as store:
        run = store.get_run(run_id)
        latest = store.latest_metrics(run.id)
        artifacts = store.list_artifacts(run.id)
    out = console()
    out.print(
        f"[bold]run {run.id}[/]  {run.project}/{run.name}  status={run.status}  by {run.user}"
    )
    out.print(f"started {when(run.start_time)} UTC, ended {when(run.end_time)} UTC")
    usage = {
        "time_s": run.time_s,
        "energy_j": run.energy_j,
        "cost_usd": run.cost_usd,
        "carbon_gco2e": run.carbon_gco2e,
    }
    sections: list[tuple[str, dict[str, Any]]] = [
        ("environment", run.environment),
        ("params", run.params),
        ("tags", run.tags),
        ("metrics (latest)", {key: _number(value) for key, value in latest.items()}),
        ("usage" + (f" ({run.usage_method})" if run.usage_method else ""), usage),
        ("artifacts", {a.name: f"{a.size_bytes} B  sha256 {a.sha256[:16]}" for a in artifacts}),
    ]
    for title, values in sections:
        table = Table(title, "value", title_justify="left")
        for key, value in values.items():
            table.add_row(key, "-" if value in (None, []) else str(value))
        out.print(table)


@runs_app.command("compare")
def runs_compare(
    run_ids: list[str] = typer.Argument(..., help="Two or more run ids (or unique prefixes)."),
) -> None:
    """Params and latest metrics side by side; rows that differ are marked with *."""
    if len(run_ids) < 2:
        raise SpecError("compare needs at least two runs")
    with open_cli_store() as store:
        runs = [store.get_run(run_id) for run_id in run_ids]
        latest = [store.latest_metrics(run.id) for run in runs]
    table = Table("", "field", *[run.id[:12] for run in runs])
    rows: list[tuple[str, list[str]]] = []
    for key in sorted({k for run in runs for k in run.params}):
        rows.append((f"param {key}", [run.params.get(key, "-") for run in runs]))
    for key in sorted({k for values in latest for k in values}):
        rows.append((f"metric {key}", [_number(values.get(key)) for values in latest]))
    for field in ("energy_j", "cost_usd", "carbon_gco2e"):
        rows.append((field, [_number(getattr(run, field)) for run in runs]))
    rows.append(("status", [run.status for run in runs]))
    for name, values in rows:
        table.add_row("*" if len(set(values)) > 1 else "", name, *values)
    console().print(table)


@runs_app.command("export")
def runs_export(
    run_id: str = typer.Argument(..., help="Run id (or a unique prefix)."),
    mlflow: str = typer.Option(..., "--mlflow", help="MLflow tracking URI to export to."),
    experiment: str | None = typer.Option(None, help="MLflow experiment (default: the project)."),
) -> None:
    """Copy a run (params, tags, metrics, usage, artifacts) to an MLflow tracking server."""
    from kilowatt.store.mlflow_export import export_run_to_mlflow

    with open_cli_store() as store:
        mlflow_id = export_run_to_mlflow(store, run_id, mlflow, experiment)
    typer.echo(f"exported run {run_id} to {mlflow} as MLflow run {mlflow_id}")


@runs_app.command("delete")
def runs_delete(
    run_id: str = typer.Argument(..., help="Run id (or a unique prefix)."),
    force: bool = typer.Option(False, "--force", help="Delete even if models came from it."),
) -> None:
    """Delete a run; refused while model versions or datasets depend on it (unless --force)."""
    with open_cli_store() as store:
        run = store.get_run(run_id)
        cut = store.delete_run(run.id, force=force)
    suffix = f" (dependents left without their run: {', '.join(cut)})" if cut else ""
    typer.echo(f"deleted run {run.id}{suffix}")
