"""The quickstart workload: the example's training spec, plan spec and Python module.

The example folder (``examples/quickstart`` in the repository) holds ``digits.yaml`` (a
``TrainSpec``), ``plan.yaml`` (a ``PlanSpec``) and the module their entry points name.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from kilowatt.errors import SpecError
from kilowatt.spec import TrainSpec, load_spec
from kilowatt.spec.plan import PlanSpec

__all__ = ["FAST_STEPS", "Workload", "load_workload"]

#: Optimizer steps of ``--fast``: enough for the digits CNN to pass 90% accuracy.
FAST_STEPS = 150
TRAIN_SPEC_FILE = "digits.yaml"
PLAN_SPEC_FILE = "plan.yaml"
CATALOG_FILE = "catalog.yaml"
#: What the example module must provide besides the spec's entry points.
_MODULE_FUNCTIONS = (
    "accuracy",
    "example_request",
    "dataset_source",
    "is_training_sample",
    "export",
)


@dataclass(frozen=True)
class Workload:
    """The quickstart job: what to train (``train``), how the planner sees it (``plan``),
    and the module with its model, data, accuracy and export functions (``module``)."""

    folder: Path
    train: TrainSpec
    plan: PlanSpec
    module: ModuleType

    @property
    def catalog_files(self) -> list[Path]:
        """The example's own catalog entries (the share of this machine it trains on)."""
        path = self.folder / CATALOG_FILE
        return [path] if path.is_file() else []

    def plan_for(self, steps: int) -> PlanSpec:
        """The plan spec of a run of ``steps`` optimizer steps at the job's batch size."""
        batch = self.train.batch_size * self.train.grad_accum * self.train.workers
        assert self.plan.train is not None  # load_workload checks the plan is a training plan
        train = self.plan.train.model_copy(
            update={"samples": float(steps * batch), "epochs": 1.0, "global_batch_samples": batch}
        )
        return self.plan.model_copy(update={"train": train})


def load_workload(folder: Path) -> Workload:
    """Read the example folder's specs and import its module.

    The folder's grandparent (the repository root for ``examples/quickstart``) is put on
    ``sys.path`` so the spec's ``examples.quickstart.<module>`` entry points import from
    any working directory.

    Raises:
        SpecError: the folder, a spec or a module function is missing or invalid.
    """
    folder = folder.resolve()
    if not (folder / TRAIN_SPEC_FILE).is_file():
        raise SpecError(
            f"{folder} has no {TRAIN_SPEC_FILE}: run kilowatt quickstart from the repository "
            "root (where examples/quickstart is), or pass --example PATH/TO/examples/quickstart"
        )
    train = load_spec(TrainSpec, folder / TRAIN_SPEC_FILE)
    plan = load_spec(PlanSpec, folder / PLAN_SPEC_FILE)
    if plan.train is None:
        raise SpecError(f"{folder / PLAN_SPEC_FILE}: the quickstart plan needs a train: section")
    root = str(folder.parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    module_name = train.model.partition(":")[0]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SpecError(
            f"{folder / TRAIN_SPEC_FILE}: cannot import {module_name!r} ({exc}); keep the "
            "example in <root>/examples/quickstart so its entry points import"
        ) from None
    missing = [name for name in _MODULE_FUNCTIONS if not callable(getattr(module, name, None))]
    if missing:
        raise SpecError(f"module {module_name!r} lacks {', '.join(missing)}; see digits.py")
    return Workload(folder=folder, train=train, plan=plan, module=module)
