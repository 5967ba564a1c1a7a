"""The training search: every allowed instance x node count x parallel layout x region,
costed, filtered by the constraints and ranked by the objective."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

from kilowatt.catalog import Catalog, Instance, Region
from kilowatt.errors import PlanInfeasible
from kilowatt.plan.calibration import Calibration
from kilowatt.plan.common import (
    OBJECTIVES,
    Rejections,
    allowed_instances,
    mfu_lookup,
    objective_key,
)
from kilowatt.plan.device import Device
from kilowatt.plan.explain import describe_train, duration, money, train_verdict
from kilowatt.plan.memory import MEMORY_USABLE_FRACTION, activation_bytes
from kilowatt.plan.result import CostBreakdown, MemoryBreakdown, PlanResult, TrainOption
from kilowatt.plan.training import Finished, TrainContext, evaluate, finish, layouts
from kilowatt.spec.plan import PlanSpec

__all__ = ["DEFAULT_MAX_ACCELERATORS", "plan_training"]

# Without a max_accelerators constraint the search stops at this many accelerators.
DEFAULT_MAX_ACCELERATORS = 1024
_GIB = 2**30


def plan_training(spec: PlanSpec, catalog: Catalog, calibration: Calibration) -> PlanResult:
    """Search, rank and explain training plans for ``spec`` (see ``kilowatt.plan.make_plan``)."""
    started = time.perf_counter()
    ctx = TrainContext.of(spec, mfu_lookup(spec, calibration))
    rejections = Rejections()
    priced: list[Finished] = []
    evaluated = 0
    for device, regions, nodes in _fleets(spec, catalog, rejections):
        for layout in layouts(device, nodes, ctx):
            evaluated += len(regions)
            label = f"{nodes} x {device.instance.name} DP{layout.dp}/TP{layout.tp}/PP{layout.pp}"
            outcome = evaluate(device, nodes, layout, ctx)
            if isinstance(outcome, str):
                rejections.add(label, outcome, times=len(regions))
                continue
            for done in finish(outcome, regions, ctx):
                problem = _violation(done, spec)
                if problem:
                    rejections.add(f"{label} in {done.region.name}", problem)
                else:
                    priced.append(done)
    if not priced:
        raise PlanInfeasible(_infeasible_message(spec, rejections, evaluated))
    devices = {
        device.accelerator.name: device.memory_bytes * MEMORY_USABLE_FRACTION
        for device in (Device.of(inst, catalog) for inst, _ in allowed_instances(spec, catalog))
    }
    elapsed_s = time.perf_counter() - started
    return _result(spec, ctx, priced, rejections, evaluated, elapsed_s, devices)


def _fleets(
    spec: PlanSpec, catalog: Catalog, rejections: Rejections
) -> Iterator[tuple[Device, list[Region], int]]:
    cap = spec.constraints.max_accelerators or DEFAULT_MAX_ACCELERATORS
    for inst, regions in allowed_instances(spec, catalog):
        device = Device.of(inst, catalog)
        if not device.accelerator.trains:
            rejections.add(
                f"{inst.name}",
                f"inference-only: {device.accelerator.name} is not used for training",
                times=len(regions),
            )
            continue
        if device.per_node > cap:
            rejections.add(
                f"1 x {inst.name}",
                f"max_accelerators: one instance has {device.per_node} accelerators, "
                f"more than max_accelerators={cap}",
                times=len(regions),
            )
            continue
        for nodes in _node_counts(inst, device.per_node, cap):
            yield device, regions, nodes


def _node_counts(inst: Instance, per_node: int, cap: int) -> list[int]:
    if inst.cloud == "local":
        return [1]  # this machine does not multiply
    counts, nodes = [], 1
    while nodes * per_node <= cap:
        counts.append(nodes)
        nodes *= 2
    return counts


def _violation(done: Finished, spec: PlanSpec) -> str | None:
    limits = spec.constraints
    if not math.isfinite(done.time_s):
        return "preemption: spot preemptions arrive faster than checkpoints can save progress"
    if limits.deadline_h is not None and done.time_s > limits.deadline_h * 3600:
        return f"deadline: takes {duration(done.time_s)}, over the {limits.deadline_h:g} h deadline"
    if limits.budget_usd is not None and done.cost_usd > limits.budget_usd:
        return f"budget: costs {money(done.cost_usd)}, over the {money(limits.budget_usd)} budget"
    return None


def _best_per_fleet(priced: list[Finished], objective: str) -> list[Finished]:
    key = objective_key(objective)
    best: dict[str, Finished] = {}
    for done in priced:
        fleet = done.candidate.device.instance.name
        if fleet not in best or key(done) < key(best[fleet]):
            best[fleet] = done
    return sorted(best.values(), key=key)


def _option(done: Finished, steps: int) -> TrainOption:
    c = done.candidate
    bottleneck, verdict = train_verdict(c)
    usable = c.device.memory_bytes * MEMORY_USABLE_FRACTION
    step = c.step
    return TrainOption(
        instance=c.device.instance.name,
        cloud=c.device.instance.cloud,
        region=done.region.name,
        accelerator=c.device.accelerator.name,
        accelerators=c.accelerators,
        nodes=c.nodes,
        data_parallel=c.layout.dp,
        tensor_parallel=c.layout.tp,
        pipeline_parallel=c.layout.pp,
        zero_stage=c.layout.zero,
        recompute=c.recompute,
        precision=c.precision,
        mfu=c.mfu,
        mfu_source=c.mfu_source,
        memory=MemoryBreakdown(
            weights_gib=c.memory.weights / _GIB,
            grads_gib=c.memory.grads / _GIB,
            optimizer_gib=c.memory.optimizer / _GIB,
            activations_gib=c.activation_bytes / _GIB,
            total_gib=c.memory_total_bytes / _GIB,
            capacity_gib=usable / _GIB,
        ),
        steps=steps,
        step_time_s=step.total_s,
        compute_s_per_step=step.compute_s,
        comm_s_per_step=step.tensor_comm_s + step.data_comm_s,
        bubble_s_per_step=step.bubble_s,
        time_on_demand_s=done.time_on_demand_s,
        time_spot_s=done.time_spot_s,
        spot_checkpoint_interval_s=(
            done.spot_interval_s if math.isfinite(done.spot_interval_s) else None
        ),
        time_s=done.time_s,
        power_w=done.power_w,
        energy_j=done.energy_j,
        carbon_gco2e=done.carbon_gco2e,
        costs=CostBreakdown(
            on_demand_usd=done.costs["on_demand"],
            spot_usd=done.costs["spot"],
            committed_usd=done.costs["committed"],
            mixed_usd=done.costs["mixed"],
            storage_usd=done.storage_usd,
            egress_usd=done.egress_usd,
        ),
        cost_usd=done.cost_usd,
        bottleneck=bottleneck,
        verdict=verdict,
    )


def _result(
    spec: PlanSpec,
    ctx: TrainContext,
    priced: list[Finished],
    rejections: Rejections,
    evaluated: int,
    elapsed_s: float,
    devices: dict[str, float],
) -> PlanResult:
    ranked = _best_per_fleet(priced, spec.objective)
    plans = [_option(done, ctx.steps) for done in ranked[: spec.top]]
    best = {name: _option(min(priced, key=objective_key(name)), ctx.steps) for name in OBJECTIVES}
    replica = _replica_memory(spec, ctx)
    return PlanResult(
        name=spec.name,
        kind="train",
        objective=spec.objective,
        pricing=spec.constraints.pricing,
        workload={
            "flops_total": ctx.flops_total,
            "steps": float(ctx.steps),
            "model_state_gib": ctx.state.total / _GIB,
            "replica_memory_gib": replica / _GIB,
            "checkpoint_gib": ctx.checkpoint_bytes / _GIB,
        },
        plans=plans,
        recommendation=plans[0],
        best_by_objective=best,
        rejected_by_reason=dict(rejections.counts.most_common()),
        rejected_examples=rejections.example_list(),
        configurations_evaluated=evaluated,
        search_time_s=elapsed_s,
        explanation=_explain(
            spec, ranked[0], plans[0], best, replica, rejections, evaluated, devices
        ),
    )


def _replica_memory(spec: PlanSpec, ctx: TrainContext) -> float:
    """Bytes one accelerator needs for an unsharded replica (selective recompute if allowed)."""
    train = spec.train
    assert train is not None
    mode = "selective" if "selective" in spec.parallelism.recompute else "full"
    mode = "none" if spec.model.architecture == "generic" else mode
    act = activation_bytes(spec.model, train.micro_batch, recompute=mode, precision=train.precision)
    return ctx.state.total + act


def _explain(
    spec: PlanSpec,
    top: Finished,
    chosen: TrainOption,
    best: dict[str, TrainOption],
    replica_bytes: float,
    rejections: Rejections,
    evaluated: int,
    devices: dict[str, float],
) -> list[str]:
    lines = [f"Recommended ({spec.objective}): {describe_train(top, spec.constraints.pricing)}."]
    lines.append(f"Bottleneck: {chosen.verdict}.")
    lines.append(_memory_sentence(devices, replica_bytes))
    c = chosen.costs
    interval = chosen.spot_checkpoint_interval_s
    spot_note = (
        f" (checkpoint every {duration(interval)} by the Young/Daly rule, "
        f"{chosen.time_spot_s / chosen.time_on_demand_s - 1:.1%} longer)"
        if interval
        else ""
    )
    share = spec.constraints.mixed_committed_fraction
    lines.append(
        f"Pricing: on-demand {money(c.on_demand_usd)}, spot {money(c.spot_usd)}{spot_note}, "
        f"1-year committed {money(c.committed_usd)}, mixed ({share:.0%} committed + spot) "
        f"{money(c.mixed_usd)}; storage {money(c.storage_usd)}, egress {money(c.egress_usd)}."
    )
    if rejections.total:
        lines.append(
            f"Rejected {rejections.total} of {evaluated} configurations: {rejections.summary()}."
        )
    others = [
        f"{name}: {o.accelerators} x {o.accelerator} ({o.instance}, {o.region})"
        for name, o in best.items()
        if name != spec.objective
    ]
    lines.append("Best by other objectives: " + "; ".join(others) + ".")
    return lines + _assumptions(spec, chosen)


def _assumptions(spec: PlanSpec, chosen: TrainOption) -> list[str]:
    """What the plan assumed because the spec or the catalog did not say."""
    train = spec.train
    assert train is not None
    said = []
    batch_field = (
        "global_batch_samples" if spec.model.architecture == "generic" else "global_batch_tokens"
    )
    if batch_field not in train.model_fields_set:
        size = getattr(train, batch_field)
        said.append(
            f"Assumed: a global batch of {size:,} {batch_field.split('_')[-1]} per step "
            f"(train.{batch_field} not given; steps, pipeline fill and communication follow "
            "from it)."
        )
    if chosen.mfu_source.startswith("assumed"):
        said.append(f"A{chosen.mfu_source[1:]}.")
    return said


def _memory_sentence(devices: dict[str, float], replica_bytes: float) -> str:
    fits = sorted((usable, n) for n, usable in devices.items() if usable >= replica_bytes)
    small = sorted(n for n, usable in devices.items() if usable < replica_bytes)
    head = f"Memory: an unsharded replica needs {replica_bytes / _GIB:.1f} GiB per accelerator"
    if not fits:
        return f"{head}; no accelerator holds one, so every plan shards or splits the model."
    tail = (
        f"; smaller parts ({', '.join(small)}) need sharding or model parallelism" if small else ""
    )
    smallest_gib = fits[0][0] / MEMORY_USABLE_FRACTION / _GIB
    names = ", ".join(n for _, n in fits)
    if not small:
        return f"{head}: it fits whole on {names}."
    return f"{head}: it fits whole only on parts of {smallest_gib:.0f} GiB or more ({names}){tail}."


def _infeasible_message(spec: PlanSpec, rejections: Rejections, evaluated: int) -> str:
    lines = [
        f"no configuration satisfies {spec.name!r}: all {evaluated} evaluated configurations "
        f"were rejected ({rejections.summary()})."
    ]
    for example in rejections.example_list()[:4]:
        lines.append(f"  - {example.configuration}: {example.reason}: {example.detail}")
    fixes = {
        "memory": "allow sharding (parallelism.zero_stages: [3]) and recompute, or larger parts",
        "deadline": "extend constraints.deadline_h or raise constraints.max_accelerators",
        "budget": "raise constraints.budget_usd or use spot/mixed pricing",
        "max_accelerators": "raise constraints.max_accelerators",
        "layout": "raise train.global_batch_tokens / global_batch_samples",
    }
    hints = [fixes[r] for r in rejections.counts if r in fixes]
    if hints:
        lines.append("To fix: " + "; or ".join(hints) + ".")
    return "\n".join(lines)
