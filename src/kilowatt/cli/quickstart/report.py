"""Step 5 of the quickstart: the report, as rows shared by the terminal and the HTML page.

Every figure carries its method: ``measured`` (timed here), the meter's method for energy
(``measured-rapl``, ``estimated-cpu-time``...), the price and grid sources for cost and
carbon, ``planned`` for the planner's predictions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from kilowatt.cli.quickstart.serving import LatencyBucket, ServingOutcome
from kilowatt.cli.quickstart.training import TrainingOutcome
from kilowatt.cli.ui_cmd import DEFAULT_HOST, DEFAULT_PORT
from kilowatt.units import j_to_kwh

__all__ = ["DASHBOARD_COMMAND", "QuickstartReport", "Row", "print_report"]

DASHBOARD_COMMAND = "kilowatt ui"
DASHBOARD_URL = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}/"


@dataclass(frozen=True)
class Row:
    """One line of a report table: a label, its value and how the value was obtained."""

    label: str
    value: str
    method: str = ""


@dataclass(frozen=True)
class QuickstartReport:
    """Everything the quickstart shows, ready to print or to write as HTML.

    Attributes:
        title: one line naming the run.
        training: accuracy, time, throughput, energy, cost, CO2e.
        plan_vs_measured: rows of (figure, planned, measured, measured/planned).
        serving: the load generator's rows (load, requests, req/s, p50, p99, errors).
        serving_summary: p50/p99/throughput of the busiest level, energy per request.
        store: what the store now holds (run, dataset, model version, deployment, lineage).
        loss_curve: ``(step, train loss)`` points; ``eval_curve``: ``(step, eval loss)``.
        histogram: the server's latency histogram.
        figures: the headline numbers, for machines (``--json`` and tests).
    """

    title: str
    training: list[Row]
    plan_vs_measured: list[tuple[str, str, str, str]]
    serving: list[tuple[str, ...]]
    serving_summary: list[Row]
    store: list[Row]
    loss_curve: list[tuple[int, float]]
    eval_curve: list[tuple[int, float]]
    histogram: list[LatencyBucket]
    figures: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


SERVING_HEADER = ("load", "requests", "req/s", "p50 ms", "p99 ms", "errors")
PLAN_HEADER = ("figure", "planned", "measured", "measured / planned")


def training_rows(training: TrainingOutcome) -> list[Row]:
    """Accuracy, time, throughput, energy, cost and CO2e of the training run."""
    result = training.result
    rows = [
        Row("accuracy", f"{training.accuracy:.1%}", f"{training.eval_samples} held-out digits"),
        Row("time", f"{result.duration_s:.2f} s", f"measured, {result.steps} steps"),
        Row("throughput", f"{result.samples_per_s:,.0f} samples/s", "measured"),
    ]
    if result.flops_per_s:
        rows.append(Row("achieved", f"{result.flops_per_s / 1e9:.2f} GFLOP/s", "measured"))
    account = result.account
    if account is not None:
        rows += [
            Row("energy", f"{account.energy_j:.1f} J ({_kwh(account.energy_j)})",
                account.energy_method),
            Row("cost", f"${account.cost_usd:.6f}", account.cost_method),
            Row("CO2e", f"{account.carbon_gco2e:.4f} g", account.carbon_method),
        ]  # fmt: skip
    return rows


def plan_rows(prediction: dict[str, float], result: Any) -> list[tuple[str, str, str, str]]:
    """The planner's prediction beside the measurement, with their ratio."""
    account = result.account
    measured = {
        "time_s": result.duration_s,
        "samples_per_s": result.samples_per_s,
        "energy_j": account.energy_j if account else None,
        "cost_usd": account.cost_usd if account else None,
        "carbon_gco2e": account.carbon_gco2e if account else None,
    }
    labels = {
        "time_s": ("time", lambda v: f"{v:.2f} s"),
        "samples_per_s": ("throughput", lambda v: f"{v:,.0f} samples/s"),
        "energy_j": ("energy", lambda v: f"{v:.1f} J"),
        "cost_usd": ("cost", lambda v: f"${v:.6f}"),
        "carbon_gco2e": ("CO2e", lambda v: f"{v:.4f} g"),
    }
    rows = []
    for key, (label, show) in labels.items():
        planned, actual = prediction.get(key), measured.get(key)
        if planned is None or actual is None:
            continue
        ratio = f"{actual / planned:.2f}x" if planned else "-"
        rows.append((label, show(planned), show(actual), ratio))
    return rows


def serving_rows(serving: ServingOutcome) -> tuple[list[tuple[str, ...]], list[Row]]:
    """The load generator's table, and the summary of the busiest level."""
    table = [
        (
            f"{r.concurrency} client{'s' if r.concurrency != 1 else ''}",
            str(r.requests),
            f"{r.throughput_rps:,.0f}",
            f"{r.p50_s * 1e3:.2f}",
            f"{r.p99_s * 1e3:.2f}",
            str(r.errors),
        )
        for r in serving.results
    ]
    best = serving.headline
    summary = [
        Row("p50 latency", f"{best.p50_s * 1e3:.2f} ms", f"measured, {best.concurrency} clients"),
        Row("p99 latency", f"{best.p99_s * 1e3:.2f} ms", f"measured, {best.concurrency} clients"),
        Row("throughput", f"{best.throughput_rps:,.0f} requests/s", "measured"),
    ]
    if serving.energy_j is not None and serving.requests:
        per_request_j = serving.energy_j / serving.requests
        summary.append(
            Row("energy/request", f"{per_request_j * 1e3:.3f} mJ", serving.energy_method)
        )
    truth, answer = serving.check
    verdict = "correct" if truth == answer else "wrong"
    summary.append(Row("check", f"a held-out {truth} is read as {answer} ({verdict})", "served"))
    return table, summary


def _kwh(energy_j: float) -> str:
    kwh = j_to_kwh(energy_j)
    return f"{kwh:.2e} kWh" if kwh < 0.01 else f"{kwh:.3f} kWh"


def finite(value: float | None) -> bool:
    """Whether ``value`` is a real number (not None, NaN or inf)."""
    return value is not None and math.isfinite(value)


def print_report(report: QuickstartReport, console: Any) -> None:
    """Print the report as Rich tables."""
    from rich.table import Table

    console.rule(f"[bold]{report.title}")
    console.print(_rows_table("training", report.training))
    plan = Table(title="plan vs measurement (planned = kilowatt plan's estimate)")
    for name in PLAN_HEADER:
        plan.add_column(name, justify="left" if name == "figure" else "right")
    for row in report.plan_vs_measured:
        plan.add_row(*row)
    console.print(plan)
    load = Table(title="load test (kilowatt's load generator, closed loop)")
    for name in SERVING_HEADER:
        load.add_column(name, justify="left" if name == "load" else "right")
    for row in report.serving:
        load.add_row(*row)
    console.print(load)
    console.print(_rows_table("serving", report.serving_summary))
    console.print(_rows_table("tracking store", report.store))
    for note in report.notes:
        console.print(f"- {note}", highlight=False, soft_wrap=True)


def _rows_table(title: str, rows: list[Row]) -> Any:
    from rich.table import Table

    table = Table(title=title, show_header=False)
    table.add_column("figure", style="bold")
    table.add_column("value", justify="right")
    table.add_column("method", style="dim")
    for row in rows:
        table.add_row(row.label, row.value, row.method)
    return table
