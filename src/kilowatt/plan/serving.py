"""The serving search: every allowed instance x replica size (tensor-parallel degree) x
batch size x region; replicas sized for the request rate under the p99 objective."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from kilowatt.catalog import Catalog, Instance, Region
from kilowatt.errors import PlanInfeasible
from kilowatt.plan.calibration import Calibration, serving_class
from kilowatt.plan.common import OBJECTIVES, Rejections, allowed_instances, objective_key
from kilowatt.plan.cost import HOURS_PER_MONTH, PriceBook
from kilowatt.plan.device import Device
from kilowatt.plan.energy import accelerator_power_w, footprint
from kilowatt.plan.explain import figure, money
from kilowatt.plan.inference import ServeEstimate, estimate_replica, replicas_needed
from kilowatt.plan.llm_serving import describe, simulate_replica
from kilowatt.plan.memory import MEMORY_USABLE_FRACTION, kv_cache_bytes_per_token
from kilowatt.plan.result import CostBreakdown, MemoryBreakdown, PlanResult, ServeOption
from kilowatt.spec.plan import PlanSpec
from kilowatt.units import SECONDS_PER_HOUR, j_to_kwh

__all__ = ["plan_serving"]

_GIB = 2**30
_MONTH_S = HOURS_PER_MONTH * SECONDS_PER_HOUR


@dataclass(frozen=True)
class _Priced:
    option: ServeOption

    @property
    def time_s(self) -> float:
        return self.option.time_s

    @property
    def cost_usd(self) -> float:
        return self.option.cost_usd

    @property
    def energy_j(self) -> float:
        return self.option.energy_j

    @property
    def carbon_gco2e(self) -> float:
        return self.option.carbon_gco2e


def plan_serving(spec: PlanSpec, catalog: Catalog, calibration: Calibration) -> PlanResult:
    """Search, rank and explain serving plans for ``spec`` (see ``kilowatt.plan.make_plan``)."""
    serve = spec.serve
    assert serve is not None
    started = time.perf_counter()
    rejections, priced, evaluated = Rejections(), [], 0
    for inst, regions in allowed_instances(spec, catalog):
        device = Device.of(inst, catalog)
        acc = device.accelerator
        model_class = spec.model.calibration_class
        mfu = (
            calibration.mfu(acc.name, serving_class(model_class))
            or calibration.mfu(acc.name, model_class)
            or acc.mfu_default
        )
        for tp in _replica_sizes(device, spec):
            for batch in _batches(serve.max_batch):
                evaluated += len(regions)
                label = f"{inst.name} TP{tp} batch {batch}"
                est = estimate_replica(device, tp, batch, serve, spec.model, mfu)
                if isinstance(est, str):
                    rejections.add(label, est, times=len(regions))
                    continue
                for region in regions:
                    option = _option(spec, device, est, region)
                    problem = _violation(spec, option)
                    if problem:
                        rejections.add(f"{label} in {region.name}", problem)
                    else:
                        priced.append(_Priced(option))
    if not priced:
        raise PlanInfeasible(_infeasible(spec, rejections, evaluated))
    result = _result(spec, priced, rejections, evaluated, time.perf_counter() - started)
    return _with_simulation(result, spec, catalog, calibration)


def _with_simulation(
    result: PlanResult, spec: PlanSpec, catalog: Catalog, calibration: Calibration
) -> PlanResult:
    """The recommendation replayed through the continuous-batching simulation."""
    top, serve = result.recommendation, spec.serve
    assert isinstance(top, ServeOption) and serve is not None
    accelerator = catalog.accelerator(top.accelerator)
    per_replica = serve.requests_per_s / top.replicas
    simulated = simulate_replica(
        spec.model,
        accelerator,
        top.accelerators_per_replica,
        requests_per_s=per_replica,
        prompt_tokens=serve.prompt_tokens,
        output_tokens=serve.output_tokens,
        precision=serve.precision,
        mfu=calibration.mfu(accelerator.name, spec.model.calibration_class),
        max_sequences=serve.max_batch,
    )
    return result.model_copy(
        update={"explanation": [*result.explanation, describe(simulated, per_replica)]}
    )


def _replica_sizes(device: Device, spec: PlanSpec) -> list[int]:
    heads = spec.model.heads or 1
    limit = min(device.per_node, spec.parallelism.max_tensor_parallel)
    sizes = [2**i for i in range(int(math.log2(limit)) + 1)]
    return [tp for tp in sizes if heads % tp == 0]


def _batches(max_batch: int) -> list[int]:
    sizes = [2**i for i in range(int(math.log2(max_batch)) + 1)]
    return sizes if sizes[-1] == max_batch else [*sizes, max_batch]


def _option(spec: PlanSpec, device: Device, est: ServeEstimate, region: Region) -> ServeOption:
    serve = spec.serve
    assert serve is not None
    inst: Instance = device.instance
    replicas = replicas_needed(serve.requests_per_s, est.requests_per_s, serve.max_utilization)
    per_instance = device.per_node // est.tp
    instances = math.ceil(replicas / per_instance)
    prices = PriceBook.of(inst)
    hourly = {
        "on_demand": prices.on_demand,
        "spot": prices.spot,
        "committed": prices.committed,
        "mixed": prices.mixed(spec.constraints.mixed_committed_fraction),
    }
    busy = serve.requests_per_s / (replicas * est.requests_per_s)
    power_w = (
        replicas * est.tp * accelerator_power_w(device.tdp_w, device.idle_w, busy)
        + instances * inst.host_power
    )
    month = footprint(power_w, _MONTH_S, region)
    per_hour = hourly[spec.constraints.pricing] * instances
    requests_per_hour = serve.requests_per_s * SECONDS_PER_HOUR
    bottleneck, verdict = _verdict(est, device, serve.p99_latency_s)
    return ServeOption(
        instance=inst.name,
        cloud=inst.cloud,
        region=region.name,
        accelerator=device.accelerator.name,
        accelerators_per_replica=est.tp,
        replicas_per_instance=per_instance,
        replicas=replicas,
        instances=instances,
        accelerators=instances * device.per_node,
        precision=device.accelerator.compute_precision(serve.precision),
        batch=est.batch,
        prefill_s=est.prefill_s,
        decode_step_s=est.decode_step_s,
        latency_p99_s=est.latency_p99_s,
        requests_per_s_per_replica=est.requests_per_s,
        output_tokens_per_s_per_replica=est.requests_per_s * serve.output_tokens,
        memory=MemoryBreakdown(
            weights_gib=est.weights_bytes / est.tp / _GIB,
            kv_cache_gib=est.kv_bytes / est.tp / _GIB,
            total_gib=est.memory_per_accelerator_bytes / _GIB,
            capacity_gib=device.memory_bytes * MEMORY_USABLE_FRACTION / _GIB,
        ),
        cost_usd_per_hour=per_hour,
        costs_per_month=CostBreakdown(
            **{f"{k}_usd": v * instances * HOURS_PER_MONTH for k, v in hourly.items()}
        ),
        cost_usd=per_hour * HOURS_PER_MONTH,
        cost_usd_per_million_tokens=per_hour / (requests_per_hour * serve.output_tokens) * 1e6,
        cost_usd_per_million_requests=per_hour / requests_per_hour * 1e6,
        power_w=power_w,
        energy_j=month.energy_j,
        energy_j_per_request=month.energy_j / (serve.requests_per_s * _MONTH_S),
        carbon_gco2e=month.carbon_gco2e,
        carbon_gco2e_per_request=month.carbon_gco2e / (serve.requests_per_s * _MONTH_S),
        time_s=est.latency_p99_s,
        bottleneck=bottleneck,
        verdict=verdict,
    )


def _verdict(est: ServeEstimate, device: Device, slo_s: float) -> tuple[str, str]:
    fill = est.memory_per_accelerator_bytes / (device.memory_bytes * MEMORY_USABLE_FRACTION)
    if fill >= 0.9:
        return "capacity", (
            f"capacity-bound: weights and KV cache fill {fill:.0%} of usable memory, which "
            f"caps the batch at {est.batch}; more memory per replica allows larger batches"
        )
    if est.memory_bound:
        return "memory-bandwidth", (
            f"memory-bandwidth-bound: each decode step reads all weights and the KV cache "
            f"({est.decode_step_s * 1e3:.1f} ms per token at batch {est.batch}); larger "
            f"batches share the reads until the p99 objective of {slo_s:g} s stops them"
        )
    return "compute", (
        f"compute-bound: at batch {est.batch} decode arithmetic outweighs memory traffic; "
        f"prefill takes {est.prefill_s * 1e3:.0f} ms per batch"
    )


def _violation(spec: PlanSpec, option: ServeOption) -> str | None:
    serve, limits = spec.serve, spec.constraints
    assert serve is not None
    if option.latency_p99_s > serve.p99_latency_s:
        return (
            f"latency: p99 {option.latency_p99_s:.2f} s exceeds the {serve.p99_latency_s:g} s "
            f"objective"
        )
    if limits.max_accelerators is not None and option.accelerators > limits.max_accelerators:
        return f"max_accelerators: needs {option.accelerators} > {limits.max_accelerators}"
    if limits.budget_usd is not None and option.cost_usd > limits.budget_usd:
        return f"budget: {money(option.cost_usd)} per month, over {money(limits.budget_usd)}"
    return None


def _result(
    spec: PlanSpec, priced: list[_Priced], rejections: Rejections, evaluated: int, elapsed: float
) -> PlanResult:
    key = objective_key(spec.objective)
    best: dict[str, _Priced] = {}
    for item in priced:
        fleet = item.option.instance
        if fleet not in best or key(item) < key(best[fleet]):
            best[fleet] = item
    plans = [p.option for p in sorted(best.values(), key=key)[: spec.top]]
    by_objective = {name: min(priced, key=objective_key(name)).option for name in OBJECTIVES}
    top = plans[0]
    serve = spec.serve
    assert serve is not None
    kv = kv_cache_bytes_per_token(spec.model, "fp32" if serve.precision == "fp32" else "bf16")
    lines = [
        f"Recommended ({spec.objective}): {top.replicas} replica(s) of "
        f"{top.accelerators_per_replica} x {top.accelerator} on {top.instances} x "
        f"{top.instance} ({top.cloud} {top.region}), "
        f"batch {top.batch}: p99 {top.latency_p99_s:.2f} s, {money(top.cost_usd)} per month "
        f"({money(top.cost_usd_per_million_tokens)} per million output tokens), "
        f"{figure(top.energy_j_per_request)} J and {figure(top.carbon_gco2e_per_request)} gCO2e "
        f"per request.",
        f"Bottleneck: {top.verdict}.",
        f"Memory: weights {top.memory.weights_gib * top.accelerators_per_replica:.1f} GiB; "
        f"KV cache {kv / 2**20:.2f} MiB per token, "
        f"{kv * (serve.prompt_tokens + serve.output_tokens) / 2**30:.2f} GiB per request.",
        f"Monthly energy {j_to_kwh(top.energy_j):,.0f} kWh, carbon "
        f"{top.carbon_gco2e / 1e6:,.2f} t CO2e.",
    ]
    if rejections.total:
        lines.append(
            f"Rejected {rejections.total} of {evaluated} configurations: {rejections.summary()}."
        )
    return PlanResult(
        name=spec.name,
        kind="serve",
        objective=spec.objective,
        pricing=spec.constraints.pricing,
        workload={
            "requests_per_s": serve.requests_per_s,
            "kv_cache_bytes_per_token": kv,
            "weights_gib": top.memory.weights_gib * top.accelerators_per_replica,
        },
        plans=plans,
        recommendation=top,
        best_by_objective=by_objective,
        rejected_by_reason=dict(rejections.counts.most_common()),
        rejected_examples=rejections.example_list(),
        configurations_evaluated=evaluated,
        search_time_s=elapsed,
        explanation=lines,
    )


def _infeasible(spec: PlanSpec, rejections: Rejections, evaluated: int) -> str:
    lines = [
        f"no configuration serves {spec.name!r}: all {evaluated} evaluated configurations were "
        f"rejected ({rejections.summary()})."
    ]
    lines += [
        f"  - {r.configuration}: {r.reason}: {r.detail}" for r in rejections.example_list()[:4]
    ]
    lines.append(
        "To fix: relax serve.p99_latency_s, shorten prompts or outputs, lower precision "
        "(fp8/int8), or raise constraints.max_accelerators / budget_usd."
    )
    return "\n".join(lines)
