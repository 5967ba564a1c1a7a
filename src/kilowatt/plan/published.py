"""Predict a published training run as a user would plan it: its model shape, tokens,
global batch, accelerator and count, the planner's time model and defaults.

``predict_run`` returns the predicted accelerator-hours beside the published ones;
``validate`` does it for every run in the catalog (``kilowatt plan --validate``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from kilowatt.catalog import Catalog, Instance, PublishedRun
from kilowatt.errors import PlanInfeasible
from kilowatt.plan.device import Device
from kilowatt.plan.time import GEMM_HALF_WIDTH
from kilowatt.plan.training import Candidate, Layout, TrainContext, evaluate, layouts
from kilowatt.spec.plan import PlanSpec

__all__ = ["RunPrediction", "RunSetup", "predict_run", "setup_run"]


@dataclass(frozen=True)
class RunPrediction:
    """Predicted against published accelerator-hours for one run."""

    run: PublishedRun
    predicted_hours: float
    mfu: float
    layout: Layout
    candidate: Candidate

    @property
    def error(self) -> float:
        """Signed relative error: ``predicted / published - 1``."""
        return self.predicted_hours / self.run.accelerator_hours - 1.0


@dataclass(frozen=True)
class RunSetup:
    """A run as the planner sees it: the context, a device of its cluster and a layout."""

    run: PublishedRun
    ctx: TrainContext
    device: Device
    layout: Layout

    def predict(self, mfu: float) -> RunPrediction:
        """Accelerator-hours at achieved fraction ``mfu`` of the precision's peak."""
        ctx = dataclasses.replace(self.ctx, mfu_for=lambda _name, _default: (mfu, "fit"))
        outcome = evaluate(self.device, self.run.nodes, self.layout, ctx)
        if isinstance(outcome, str):
            raise PlanInfeasible(f"published run {self.run.name}: {outcome}")
        hours = ctx.steps * outcome.step.total_s * self.run.count / 3600.0
        return RunPrediction(self.run, hours, mfu, self.layout, outcome)


def setup_run(
    run: PublishedRun, catalog: Catalog, gemm_half_width: float = GEMM_HALF_WIDTH
) -> RunSetup:
    """The planner's view of ``run``: its published layout, or the fastest that fits."""
    spec = PlanSpec.model_validate(
        {
            "name": run.name,
            "model": run.model.model_dump(exclude_none=True),
            "train": {
                "tokens": run.tokens,
                "global_batch_tokens": run.global_batch_tokens,
                "precision": run.precision,
                "micro_batch": run.layout.micro_batch if run.layout else 1,
            },
            # Practitioners pick tensor parallelism within a node and deep pipelines.
            "parallelism": {
                "max_tensor_parallel": run.per_node,
                "max_pipeline_parallel": 32,
                **_recompute_modes(run),
            },
        }
    )
    accelerator = catalog.accelerator(run.accelerator)
    ctx = TrainContext.of(spec, lambda _name, default: (default, "catalog default"))
    ctx = dataclasses.replace(ctx, gemm_half_width=gemm_half_width)
    device = Device.of(_cluster_node(run, accelerator.name), catalog)
    layout = _published_layout(run) or _fastest_layout(run, ctx, device)
    return RunSetup(run=run, ctx=ctx, device=device, layout=layout)


def predict_run(run: PublishedRun, catalog: Catalog, mfu: float | None = None) -> RunPrediction:
    """Predict ``run`` at ``mfu`` (default: the catalog's for its accelerator and precision)."""
    setup = setup_run(run, catalog)
    if mfu is None:
        mfu = catalog.accelerator(run.accelerator).default_mfu(run.precision)
    return setup.predict(mfu)


def _cluster_node(run: PublishedRun, accelerator: str) -> Instance:
    return Instance(
        name=f"{run.name}-node",
        cloud="published",
        regions=["local"],
        accelerator=accelerator,
        accelerator_count=run.per_node,
        vcpus=1,
        memory_gib=1,
        network_gbps=run.node_network_gbps,
        price_usd_per_hour=0.0,
        source=run.source,
        as_of=run.as_of,
    )


def _recompute_modes(run: PublishedRun) -> dict[str, list[str]]:
    if run.layout is None or run.layout.recompute is None:
        return {}
    return {"recompute": [run.layout.recompute]}


def _published_layout(run: PublishedRun) -> Layout | None:
    if run.layout is None:
        return None
    given = run.layout
    return Layout(dp=given.dp, tp=given.tp, pp=given.pp, zero=given.zero, ep=given.ep)


def _fastest_layout(run: PublishedRun, ctx: TrainContext, device: Device) -> Layout:
    best: tuple[float, Layout] | None = None
    reasons = []
    for layout in layouts(device, run.nodes, ctx):
        outcome = evaluate(device, run.nodes, layout, ctx)
        if isinstance(outcome, str):
            reasons.append(outcome)
            continue
        if best is None or outcome.step.total_s < best[0]:
            best = (outcome.step.total_s, layout)
    if best is None:
        raise PlanInfeasible(f"published run {run.name}: no layout fits ({reasons[:1]})")
    assert math.isfinite(best[0])
    return best[1]
