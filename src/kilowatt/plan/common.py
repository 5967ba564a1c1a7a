"""Pieces both searches share: which instances and regions are allowed, MFU lookup,
rejection bookkeeping and ranking keys."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kilowatt.catalog import Catalog, Instance, Region
from kilowatt.errors import SpecError
from kilowatt.plan.calibration import Calibration
from kilowatt.plan.result import Rejection
from kilowatt.spec.plan import PlanSpec

__all__ = ["OBJECTIVES", "Rejections", "allowed_instances", "mfu_lookup", "objective_key"]

OBJECTIVES = ("time", "cost", "energy", "carbon")
_EXAMPLES_PER_REASON = 3


def objective_key(objective: str) -> Callable[[Any], tuple[float, float]]:
    """Sort key for a priced configuration: the objective, then cost or time to break ties."""
    if objective == "time":
        return lambda f: (f.time_s, f.cost_usd)
    if objective == "energy":
        return lambda f: (f.energy_j, f.time_s)
    if objective == "carbon":
        return lambda f: (f.carbon_gco2e, f.cost_usd)
    return lambda f: (f.cost_usd, f.time_s)


def mfu_lookup(spec: PlanSpec, calibration: Calibration) -> Callable[[str], tuple[float, str]]:
    """MFU by accelerator name: the spec's override, then calibration, then catalog default."""
    override = spec.train.mfu if spec.train is not None else None
    model_class = spec.model.calibration_class
    cache: dict[str, tuple[float, str]] = {}

    def lookup(accelerator: str, default: float) -> tuple[float, str]:
        if accelerator not in cache:
            measured = calibration.mfu(accelerator, model_class)
            if override is not None:
                cache[accelerator] = (override, "spec")
            elif measured is not None:
                cache[accelerator] = (measured, "calibration")
            else:
                cache[accelerator] = (default, "catalog default")
        return cache[accelerator]

    return lookup


def allowed_instances(spec: PlanSpec, catalog: Catalog) -> list[tuple[Instance, list[Region]]]:
    """Instances the constraints allow, each with its allowed regions.

    Names in the allow-lists must exist in the catalog (``CatalogLookupError`` otherwise).
    """
    limits = spec.constraints
    names = {catalog.instance(n).name for n in limits.instances}
    accelerators = {catalog.accelerator(n).name for n in limits.accelerators}
    regions = {catalog.region(n).name for n in limits.regions}
    clouds = set(limits.clouds)
    known_clouds = {inst.cloud for inst in catalog.instances}
    if clouds - known_clouds:
        raise SpecError(
            f"constraints.clouds: unknown cloud(s) {sorted(clouds - known_clouds)}; "
            f"the catalog has {sorted(known_clouds)}"
        )
    chosen = []
    for inst in catalog.instances:
        if names and inst.name not in names:
            continue
        if accelerators and inst.accelerator not in accelerators:
            continue
        if clouds and inst.cloud not in clouds:
            continue
        where = [catalog.region(r) for r in inst.regions if not regions or r in regions]
        if where:
            chosen.append((inst, where))
    if not chosen:
        raise SpecError(
            "constraints: no catalog instance matches the allow-lists "
            f"(instances={sorted(names)}, accelerators={sorted(accelerators)}, "
            f"clouds={sorted(clouds)}, regions={sorted(regions)}); widen them"
        )
    return chosen


@dataclass
class Rejections:
    """Counts of rejected configurations by reason, with a few examples of each."""

    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[Rejection]] = field(default_factory=lambda: defaultdict(list))

    def add(self, configuration: str, message: str, times: int = 1) -> None:
        """Record ``times`` configurations rejected with ``message`` ("reason: detail")."""
        reason, _, detail = message.partition(": ")
        self.counts[reason] += times
        bucket = self.examples[reason]
        if len(bucket) < _EXAMPLES_PER_REASON:
            bucket.append(Rejection(configuration=configuration, reason=reason, detail=detail))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def example_list(self) -> list[Rejection]:
        return [r for reason, _ in self.counts.most_common() for r in self.examples[reason]]

    def summary(self) -> str:
        """``"120 by deadline, 40 by memory"``, most frequent first."""
        return ", ".join(f"{n} by {reason}" for reason, n in self.counts.most_common())
