"""The planner: size a training or serving workload against the catalog and recommend.

Pure Python (no torch): estimators for compute, memory, network, time, cost, energy and
inference, and a search that ranks every fitting configuration by the objective.

>>> import kilowatt
>>> result = kilowatt.make_plan("examples/plans/2b-transformer.yaml")  # doctest: +SKIP
>>> result.recommendation.accelerator  # doctest: +SKIP
'a100-40gb'
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from kilowatt.catalog import Catalog, load_catalog
from kilowatt.plan.calibration import (
    Calibration,
    load_calibration,
    record_measurement,
    save_calibration,
)
from kilowatt.plan.predict import Prediction, predict_training
from kilowatt.plan.result import PlanResult, Rejection, ServeOption, TrainOption
from kilowatt.spec import Settings, load_spec
from kilowatt.spec.plan import PlanSpec

__all__ = [
    "Calibration",
    "PlanResult",
    "PlanSpec",
    "Prediction",
    "Rejection",
    "ServeOption",
    "TrainOption",
    "load_calibration",
    "make_plan",
    "predict_training",
    "record_measurement",
    "save_calibration",
]


def make_plan(
    spec: PlanSpec | dict[str, Any] | str | Path,
    *,
    catalog: Catalog | None = None,
    calibration: Calibration | None = None,
    now: dt.datetime | None = None,
) -> PlanResult:
    """Plan a workload: every fitting configuration costed, ranked, explained.

    Args:
        spec: a ``PlanSpec``, a mapping, or the path of a YAML plan spec.
        catalog: hardware and prices (default: built-in plus ``KILOWATT_HOME/catalog``).
        calibration: measured MFUs (default: ``KILOWATT_HOME/calibration.json`` if any).
        now: the moment "starting now" means for ``schedule:`` (default: the clock).

    Returns:
        A ``PlanResult``: ``plans`` best first, ``recommendation``, ``rejected_by_reason``
        and ``explanation``.

    Raises:
        SpecError: the spec is invalid (the message names the file and field).
        CatalogLookupError: the spec names an accelerator, instance or region not in the
            catalog (with suggestions).
        PlanInfeasible: nothing fits the constraints (the message says why, by reason).

    >>> result = make_plan({"model": {"architecture": "generic", "params": 1.2e7,
    ...                          "forward_flops_per_sample": 1.8e9},
    ...                "train": {"samples": 50000, "epochs": 10, "precision": "fp32"},
    ...                "constraints": {"instances": ["local-cpu"]}})
    >>> result.recommendation.instance
    'local-cpu'
    """
    from kilowatt.plan.search import plan_training
    from kilowatt.plan.serving import plan_serving

    parsed = spec if isinstance(spec, PlanSpec) else load_spec(PlanSpec, spec)
    if catalog is None or calibration is None:
        settings = Settings.from_env()
        catalog = catalog or load_catalog(user_dir=settings.catalog_dir)
        calibration = calibration or load_calibration(settings.home / "calibration.json")
    if parsed.train is None:
        result = plan_serving(parsed, catalog, calibration)
    else:
        result = plan_training(parsed, catalog, calibration)
    if parsed.schedule is not None:
        from kilowatt.plan.schedule import schedule_recommendation

        result = schedule_recommendation(result, parsed.schedule, now or dt.datetime.now(dt.UTC))
    if parsed.buy is not None:
        from kilowatt.plan.ownership import attach_ownership

        result = attach_ownership(result, parsed.buy, catalog)
    return result
