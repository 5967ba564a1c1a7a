"""Fit the planner's achieved-efficiency defaults on published runs, and measure how well
defaults fitted without a run predict it (leave-one-out).

One parameter per (accelerator family, precision): the achieved fraction of that format's
peak on wide matrices (``mfu``). Everything else — steps from the global batch, GEMM width,
pipeline bubbles, tensor, pipeline, data-parallel and expert-parallel communication — is the
planner's time model. A family with no other run of its precision borrows: bf16 from every
other bf16 run (each at its own part's peak); fp8 from its family's bf16 figure scaled by
the published fp8-to-bf16 throughput ratio (``FP8_TO_BF16_THROUGHPUT``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from kilowatt.catalog import Catalog, PublishedRun
from kilowatt.catalog.models import FP8_TO_BF16_THROUGHPUT
from kilowatt.plan.published import RunPrediction, RunSetup, setup_run

__all__ = [
    "FP8_TO_BF16_THROUGHPUT",
    "FitGroup",
    "LeaveOneOut",
    "ValidationRow",
    "fit_defaults",
    "fit_group_key",
    "group_mfu",
    "leave_one_out",
    "setups",
    "validate",
]

FitGroup = tuple[str, str]
_MFU_RANGE = (0.05, 0.95)
_ITERATIONS = 40


def fit_group_key(run: PublishedRun, catalog: Catalog) -> FitGroup:
    """``(family, precision)``: parts with the same compute die share an efficiency."""
    return catalog.accelerator(run.accelerator).fit_family, run.precision


def setups(runs: Sequence[PublishedRun], catalog: Catalog) -> list[RunSetup]:
    """Each run as the planner sees it (layouts chosen once, at the catalog defaults)."""
    return [setup_run(run, catalog) for run in runs]


def _log_error(setup: RunSetup, mfu: float) -> float:
    return math.log(setup.predict(mfu).predicted_hours / setup.run.accelerator_hours)


def fit_mfu(group: Sequence[RunSetup]) -> float:
    """The MFU minimising the absolute log error over ``group`` (golden-section search;
    predicted hours fall monotonically with MFU, so the loss has one minimum). Absolute,
    not squared: published hours that include long outages should not drag the default."""
    low, high = _MFU_RANGE
    ratio = (math.sqrt(5.0) - 1.0) / 2.0

    def loss(mfu: float) -> float:
        return sum(abs(_log_error(s, mfu)) for s in group)

    a, b = low, high
    for _ in range(_ITERATIONS):
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        if loss(c) < loss(d):
            b = d
        else:
            a = c
    return (a + b) / 2.0


def fit_defaults(
    fitted: Sequence[RunSetup], catalog: Catalog, wanted: Sequence[FitGroup] = ()
) -> dict[FitGroup, float]:
    """MFU per group fitted on ``fitted``; groups in ``wanted`` without runs borrow."""
    keys = dict.fromkeys([*(fit_group_key(s.run, catalog) for s in fitted), *wanted])
    return {key: group_mfu(key, fitted, catalog) for key in keys}


def group_mfu(key: FitGroup, fitted: Sequence[RunSetup], catalog: Catalog) -> float:
    """The MFU of one group fitted on its runs in ``fitted``; borrowed when it has none."""
    members = [s for s in fitted if fit_group_key(s.run, catalog) == key]
    return fit_mfu(members) if members else _borrowed_mfu(key, fitted, catalog)


def _borrowed_mfu(key: FitGroup, fitted: Sequence[RunSetup], catalog: Catalog) -> float:
    family, precision = key
    if precision == "fp8":
        bf16 = group_mfu((family, "bf16"), fitted, catalog)
        return bf16 * FP8_TO_BF16_THROUGHPUT / 2.0
    same_precision = [s for s in fitted if s.run.precision == precision]
    if not same_precision:
        raise ValueError(f"no published {precision} run to borrow an efficiency from")
    return fit_mfu(same_precision)


@dataclass(frozen=True)
class LeaveOneOut:
    """Each run predicted by defaults fitted without it."""

    predictions: list[RunPrediction]

    @property
    def errors(self) -> list[float]:
        return [p.error for p in self.predictions]

    def within(self, tolerance: float) -> float:
        """Share of runs predicted within ``±tolerance``."""
        return sum(abs(e) <= tolerance for e in self.errors) / len(self.errors)

    @property
    def median_abs_error(self) -> float:
        return statistics.median(abs(e) for e in self.errors)


def leave_one_out(all_setups: Sequence[RunSetup], catalog: Catalog) -> LeaveOneOut:
    """Predict every run with the defaults fitted on the others."""
    predictions = []
    for index, setup in enumerate(all_setups):
        others = [s for i, s in enumerate(all_setups) if i != index]
        mfu = group_mfu(fit_group_key(setup.run, catalog), others, catalog)
        predictions.append(setup.predict(mfu))
    return LeaveOneOut(predictions)


@dataclass(frozen=True)
class ValidationRow:
    """One published run: published hours, hours at the catalog defaults, and leave-one-out."""

    run: PublishedRun
    catalog_default: RunPrediction
    leave_one_out: RunPrediction


def validate(catalog: Catalog, runs: Sequence[PublishedRun]) -> list[ValidationRow]:
    """Every run predicted at the catalog's defaults and by defaults fitted without it."""
    all_setups = setups(runs, catalog)
    held_out = leave_one_out(all_setups, catalog).predictions
    rows = []
    for setup, loo in zip(all_setups, held_out, strict=True):
        part = catalog.accelerator(setup.run.accelerator)
        rows.append(
            ValidationRow(setup.run, setup.predict(part.default_mfu(setup.run.precision)), loo)
        )
    return rows
