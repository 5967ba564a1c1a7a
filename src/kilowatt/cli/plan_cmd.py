"""``kilowatt plan SPEC.yaml``: size a workload against the catalog and recommend.

Prints a table of the best plans and a short explanation; ``--json`` prints the
``PlanResult`` document instead (see ``kilowatt.plan.result``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

if TYPE_CHECKING:
    from kilowatt.catalog import Catalog
    from kilowatt.plan import PlanResult

__all__ = ["register", "render_plan", "render_validation"]


def register(app: typer.Typer) -> None:
    @app.command()
    def plan(
        spec: Annotated[
            Path | None, typer.Argument(help="plan spec (YAML)", show_default=False)
        ] = None,
        json_output: Annotated[
            bool, typer.Option("--json", help="print the machine-readable PlanResult")
        ] = False,
        catalog: Annotated[
            list[Path] | None,
            typer.Option("--catalog", help="extra catalog file (repeatable); later files win"),
        ] = None,
        objective: Annotated[
            Literal["time", "cost", "energy", "carbon"] | None,
            typer.Option(help="rank by this instead of the spec's objective"),
        ] = None,
        top: Annotated[int | None, typer.Option(help="how many plans to show", min=1)] = None,
        validate: Annotated[
            bool,
            typer.Option(
                "--validate",
                help="predict every published training run in the catalog against its "
                "reported accelerator-hours (catalog defaults and leave-one-out)",
            ),
        ] = False,
    ) -> None:
        """Plan training or serving: hardware, count, layout, time, cost, energy, CO2e."""
        from kilowatt.catalog import load_catalog
        from kilowatt.errors import SpecError
        from kilowatt.plan import PlanSpec, load_calibration, make_plan
        from kilowatt.spec import Settings, load_spec

        if spec is None and not validate:
            raise SpecError("kilowatt plan needs a plan spec (YAML), or --validate")
        settings = Settings.from_env()
        loaded = load_catalog(extra_files=catalog or (), user_dir=settings.catalog_dir)
        if validate:
            render_validation(loaded)
            return
        assert spec is not None  # checked above
        parsed = load_spec(PlanSpec, spec)
        overrides = {k: v for k, v in {"objective": objective, "top": top}.items() if v}
        if overrides:
            parsed = PlanSpec.model_validate({**parsed.model_dump(), **overrides})
        result = make_plan(
            parsed,
            catalog=loaded,
            calibration=load_calibration(settings.home / "calibration.json"),
        )
        if json_output:
            typer.echo(result.model_dump_json(indent=2))
        else:
            render_plan(result)


def render_plan(result: PlanResult) -> None:
    """Print ``result`` as a Rich table followed by its explanation."""
    from rich.console import Console

    console = Console(soft_wrap=False)
    if not console.is_terminal:  # files and pipes get the whole table, not an 80-column squeeze
        console = Console(soft_wrap=False, width=200)
    table = _train_table(result) if result.kind == "train" else _serve_table(result)
    console.print(table)
    for line in result.explanation:
        console.print(f"- {line}", highlight=False, soft_wrap=True)
    console.print(
        f"[dim]{result.configurations_evaluated} configurations evaluated in "
        f"{result.search_time_s:.2f} s; all figures are estimates (method: planned).[/]"
    )


def render_validation(catalog: Catalog) -> None:
    """Print predicted against published accelerator-hours for every published run."""
    from rich.console import Console
    from rich.table import Table

    from kilowatt.catalog import load_published_runs
    from kilowatt.plan.fit import LeaveOneOut, validate

    rows = validate(catalog, load_published_runs())
    table = Table(title="published training runs: accelerator-hours, predicted vs published")
    for name in ("run", "accelerators", "prec", "layout", "published h", "default h"):
        table.add_column(name, justify="left" if name in ("run", "layout") else "right")
    for name in ("err", "leave-one-out h", "LOO err", "LOO MFU"):
        table.add_column(name, justify="right")
    for row in rows:
        run, lay = row.run, row.catalog_default.layout
        count = f"{run.count}{'' if run.count_published else '*'} {run.accelerator}"
        table.add_row(
            run.name,
            count,
            run.precision,
            f"TP{lay.tp} PP{lay.pp} DP{lay.dp}" + (f" EP{lay.ep}" if lay.ep > 1 else ""),
            f"{run.accelerator_hours:,.0f}",
            f"{row.catalog_default.predicted_hours:,.0f}",
            f"{row.catalog_default.error:+.0%}",
            f"{row.leave_one_out.predicted_hours:,.0f}",
            f"{row.leave_one_out.error:+.0%}",
            f"{row.leave_one_out.mfu:.3f}",
        )
    console = Console(soft_wrap=False, width=200)
    console.print(table)
    held_out = LeaveOneOut([row.leave_one_out for row in rows])
    console.print(
        f"leave-one-out: {held_out.within(0.25):.0%} of {len(rows)} runs within ±25%, median "
        f"absolute error {held_out.median_abs_error:.1%}. * count not published (an "
        "estimate; see the run's hours_basis in published_runs.yaml).",
        highlight=False,
    )


def _train_table(result: PlanResult):  # type: ignore[no-untyped-def]
    from rich.table import Table

    from kilowatt.plan import TrainOption
    from kilowatt.plan.explain import duration, figure, money
    from kilowatt.units import j_to_kwh

    table = Table(title=f"{result.name}: training plans by {result.objective} ({result.pricing})")
    for name in ("#", "accelerators", "instance", "region", "layout", "mem GiB", "time"):
        table.add_column(name, justify="right" if name in ("#", "mem GiB") else "left")
    for name in ("on-demand", "spot", "mixed", "kWh", "kg CO2e", "bound by"):
        table.add_column(name, justify="left" if name == "bound by" else "right")
    for rank, opt in enumerate(result.plans, start=1):
        assert isinstance(opt, TrainOption)
        layout = (
            f"DP{opt.data_parallel} TP{opt.tensor_parallel} PP{opt.pipeline_parallel} "
            f"Z{opt.zero_stage} {opt.recompute}"
        )
        table.add_row(
            str(rank),
            f"{opt.accelerators} x {opt.accelerator}",
            f"{opt.nodes} x {opt.instance}",
            opt.region if opt.cloud == opt.region else f"{opt.cloud} {opt.region}",
            layout,
            f"{opt.memory.total_gib:.1f}/{opt.memory.capacity_gib:.0f}",
            duration(opt.time_s),
            money(opt.costs.on_demand_usd),
            money(opt.costs.spot_usd),
            money(opt.costs.mixed_usd),
            figure(j_to_kwh(opt.energy_j)),
            figure(opt.carbon_gco2e / 1000),
            opt.bottleneck,
        )
    return table


def _serve_table(result: PlanResult):  # type: ignore[no-untyped-def]
    from rich.table import Table

    from kilowatt.plan import ServeOption
    from kilowatt.plan.explain import figure, money

    table = Table(title=f"{result.name}: serving plans by {result.objective} ({result.pricing})")
    for name in ("#", "replicas", "instances", "region", "batch", "p99 s", "$/month"):
        table.add_column(name, justify="left" if name in ("instances", "region") else "right")
    for name in ("$/M tokens", "J/request", "gCO2e/req", "bound by"):
        table.add_column(name, justify="left" if name == "bound by" else "right")
    for rank, opt in enumerate(result.plans, start=1):
        assert isinstance(opt, ServeOption)
        table.add_row(
            str(rank),
            f"{opt.replicas} x {opt.accelerators_per_replica} {opt.accelerator}",
            f"{opt.instances} x {opt.instance}",
            f"{opt.cloud} {opt.region}",
            str(opt.batch),
            f"{opt.latency_p99_s:.2f}",
            money(opt.cost_usd),
            money(opt.cost_usd_per_million_tokens),
            figure(opt.energy_j_per_request),
            figure(opt.carbon_gco2e_per_request),
            opt.bottleneck,
        )
    return table
