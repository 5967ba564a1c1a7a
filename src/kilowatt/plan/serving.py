"""The serving search: every allowed instance x replica size (tensor-parallel degree) x
cap on running sequences (``batch``; the KV cache may cap it lower) x region, each replica
a continuous-batching engine ranked by its steady state (``kilowatt.plan.llm_steady``), with
replicas sized for the request rate under the p99 objective. In a serving option,
``prefill_s`` is the iteration that prefills a prompt, ``decode_step_s`` the mean iteration
(inter-token latency) at the planned load and ``kv_cache_gib`` what the running sequences
hold at the cap, at their mean length."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

from kilowatt.catalog import Catalog, Instance, Region
from kilowatt.errors import PlanInfeasible
from kilowatt.plan.calibration import Calibration, serving_class
from kilowatt.plan.common import OBJECTIVES, Rejections, allowed_instances, objective_key
from kilowatt.plan.cost import HOURS_PER_MONTH, PriceBook
from kilowatt.plan.device import Device
from kilowatt.plan.energy import accelerator_power_w, footprint
from kilowatt.plan.explain import figure, money
from kilowatt.plan.inference import replicas_needed, tensor_parallel_step_s
from kilowatt.plan.llm_serving import (
    STEP_OVERHEAD_S,
    Engine,
    describe,
    poisson_arrivals,
    simulate,
)
from kilowatt.plan.llm_steady import (
    SteadyState,
    capacity_requests_per_s,
    concurrency_limit,
    steady_state,
)
from kilowatt.plan.memory import MEMORY_USABLE_FRACTION, kv_cache_bytes_per_token
from kilowatt.plan.result import CostBreakdown, MemoryBreakdown, PlanResult, ServeOption
from kilowatt.spec.plan import PlanSpec, ServingWorkload
from kilowatt.units import SECONDS_PER_HOUR, j_to_kwh

__all__ = ["plan_serving"]

_GIB = 2**30
_MONTH_S = HOURS_PER_MONTH * SECONDS_PER_HOUR
# The plans shown first are replayed through the event simulation, each with this many
# Poisson arrivals; the search ranks every configuration by the steady-state estimate.
_SIMULATED_PLANS = 3
_SIMULATED_REQUESTS = 300
# A replica at 1% of its capacity: the best latency more replicas can buy.
_LIGHT_LOAD = 0.01


@dataclass(frozen=True)
class _Priced:
    option: ServeOption
    engine: Engine

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
        prefill_mfu = calibration.prefill_mfu(acc.name, serving_class(model_class))
        for tp in _replica_sizes(device, spec):
            engine = _engine(device, tp, spec, mfu, prefill_mfu)
            caps = _batches(serve.max_batch)
            evaluated += len(caps) * len(regions)
            if isinstance(engine, str):
                rejections.add(f"{inst.name} TP{tp}", engine, times=len(caps) * len(regions))
                continue
            for cap in _caps(engine, serve, caps, rejections, f"{inst.name} TP{tp}", regions):
                label = f"{inst.name} TP{tp} batch {cap}"
                sized = _sized(replace(engine, max_sequences=cap), serve, tp)
                if isinstance(sized, str):
                    rejections.add(label, sized, times=len(regions))
                    continue
                for region in regions:
                    option = _option(spec, device, sized, region)
                    problem = _violation(spec, option)
                    if problem:
                        rejections.add(f"{label} in {region.name}", problem)
                    else:
                        priced.append(_Priced(option, sized.engine))
    if not priced:
        raise PlanInfeasible(_infeasible(spec, rejections, evaluated))
    result = _result(spec, priced, rejections, evaluated, time.perf_counter() - started)
    engines = {_key(p.option): p.engine for p in priced}
    result = _with_simulation(result, spec, engines)
    top = result.recommendation
    assert isinstance(top, ServeOption)
    note = _prefill_note(spec, top, engines[_key(top)], calibration)
    return (
        result.model_copy(update={"explanation": [*result.explanation, note]}) if note else result
    )


def _prefill_note(
    spec: PlanSpec, option: ServeOption, engine: Engine, calibration: Calibration
) -> str | None:
    """Where the time to first token's prefill rate comes from, when it was measured."""
    serve = spec.serve
    assert serve is not None
    key = serving_class(spec.model.calibration_class)
    entry = calibration.entry(option.accelerator, key)
    if entry is None or entry.prefill_mfu is None:
        return None
    tokens_per_s = engine.prefill_rate_flops_per_s / engine.flops_per_token
    prompt_s = engine.prefill_compute_s(serve.prompt_tokens, serve.prompt_tokens**2 / 2)
    return (
        f"Time to first token is calibrated: prompts prefill at {entry.prefill_mfu:.2%} of "
        f"{option.accelerator} peak, the mean of {entry.prefill_samples} measured serving "
        f"run(s) (calibration {option.accelerator}/{key}, `kilowatt generate serve`, last "
        f"{entry.updated:%Y-%m-%d}): {tokens_per_s:,.0f} prompt tokens/s per replica, so a "
        f"{serve.prompt_tokens}-token prompt takes {prompt_s * 1e3:,.1f} ms of arithmetic "
        f"before queueing and step overhead."
    )


def _key(option: ServeOption) -> tuple[str, int, int]:
    return option.instance, option.accelerators_per_replica, option.batch


def _with_simulation(
    result: PlanResult, spec: PlanSpec, engines: dict[tuple[str, int, int], Engine]
) -> PlanResult:
    """The plans shown first, replayed through the continuous-batching event simulation
    for exact latency percentiles (the search ranked them by the steady-state estimate)."""
    serve = spec.serve
    assert serve is not None
    lines = []
    for rank, option in enumerate(result.plans[:_SIMULATED_PLANS], start=1):
        assert isinstance(option, ServeOption)
        per_replica = serve.requests_per_s / option.replicas
        arrivals = poisson_arrivals(
            per_replica, _SIMULATED_REQUESTS, serve.prompt_tokens, serve.output_tokens
        )
        simulated = simulate(engines[_key(option)], arrivals)
        which = "Recommended plan" if rank == 1 else f"Plan {rank}"
        lines.append(
            f"{which} ({option.instance} TP{option.accelerators_per_replica} batch "
            f"{option.batch}): {describe(simulated, per_replica)}"
        )
    return result.model_copy(update={"explanation": [*result.explanation, *lines]})


def _engine(
    device: Device, tp: int, spec: PlanSpec, mfu: float, prefill_mfu: float | None
) -> Engine | str:
    """One replica of ``tp`` devices as the continuous-batching engine, or why it cannot
    hold the weights and one request's KV cache. ``prefill_mfu``: the measured prefill
    fraction of peak (a serving calibration), else prompts prefill at ``mfu``."""
    serve = spec.serve
    assert serve is not None
    peak = tp * device.peak_flops(serve.precision)
    try:
        engine = Engine.for_model(
            spec.model,
            memory_bytes=tp * device.memory_bytes,
            bandwidth_bytes_per_s=tp * device.bandwidth_bytes_per_s,
            flops_per_s=peak * mfu,
            prefill_flops_per_s=peak * prefill_mfu if prefill_mfu else None,
            precision=serve.precision,
            max_sequences=serve.max_batch,
            # each iteration's all-reduces between the replica's devices (two per layer)
            step_overhead_s=STEP_OVERHEAD_S + tensor_parallel_step_s(spec.model, 1, tp, device),
        )
    except PlanInfeasible as exc:
        return f"memory: {exc}"
    request = serve.prompt_tokens + serve.output_tokens
    if math.ceil(request / engine.block_tokens) > engine.kv_blocks:  # whole blocks, as paged
        return (
            f"memory: the KV cache holds {engine.kv_capacity_tokens} tokens, fewer than one "
            f"request's {request}"
        )
    return engine


def _caps(
    engine: Engine,
    serve: ServingWorkload,
    caps: list[int],
    rejections: Rejections,
    label: str,
    regions: list[Region],
) -> list[int]:
    """The running-sequence caps worth trying: those below what the KV cache holds, and
    that limit itself; higher caps are never reached, so they are rejected as memory."""
    slots, _ = concurrency_limit(engine, serve.prompt_tokens, serve.output_tokens)
    for cap in caps:
        if cap > slots:
            rejections.add(
                f"{label} batch {cap}",
                f"memory: the KV cache holds {slots} running sequences, fewer than {cap}",
                times=len(regions),
            )
    return sorted({cap for cap in caps if cap < slots} | {min(slots, max(caps))})


@dataclass(frozen=True)
class _Sized:
    """A replica (engine), its capacity and the replicas that meet rate and objective."""

    engine: Engine
    tp: int
    capacity_requests_per_s: float
    replicas: int
    state: SteadyState


def _sized(engine: Engine, serve: ServingWorkload, tp: int) -> _Sized | str:
    """Replicas for the rate at no more than ``max_utilization`` each, then more until the
    steady-state p99 latency meets the objective (fewer requests per replica wait less)."""
    shape = (serve.prompt_tokens, serve.output_tokens)
    capacity = capacity_requests_per_s(engine, *shape)
    light = steady_state(engine, capacity * _LIGHT_LOAD, *shape)
    if light is None or light.latency_p99_s > serve.p99_latency_s:
        latency = light.latency_p99_s if light else math.inf
        return (
            f"latency: p99 {latency:.2f} s even at light load exceeds the "
            f"{serve.p99_latency_s:g} s objective"
        )

    def state(replicas: int) -> SteadyState | None:
        found = steady_state(engine, serve.requests_per_s / replicas, *shape)
        return found if found and found.latency_p99_s <= serve.p99_latency_s else None

    replicas = replicas_needed(serve.requests_per_s, capacity, serve.max_utilization)
    if state(replicas) is None:
        failing, replicas = replicas, 2 * replicas
        while state(replicas) is None:
            failing, replicas = replicas, 2 * replicas
        while replicas - failing > 1:  # the fewest that meet it
            middle = (failing + replicas) // 2
            failing, replicas = (failing, middle) if state(middle) else (middle, replicas)
    met = state(replicas)
    assert met is not None
    return _Sized(engine, tp, capacity, replicas, met)


def _replica_sizes(device: Device, spec: PlanSpec) -> list[int]:
    heads = spec.model.heads or 1
    limit = min(device.per_node, spec.parallelism.max_tensor_parallel)
    sizes = [2**i for i in range(int(math.log2(limit)) + 1)]
    return [tp for tp in sizes if heads % tp == 0]


def _batches(max_batch: int) -> list[int]:
    sizes = [2**i for i in range(int(math.log2(max_batch)) + 1)]
    return sizes if sizes[-1] == max_batch else [*sizes, max_batch]


def _option(spec: PlanSpec, device: Device, sized: _Sized, region: Region) -> ServeOption:
    serve = spec.serve
    assert serve is not None
    inst: Instance = device.instance
    engine, state, replicas = sized.engine, sized.state, sized.replicas
    tp = sized.tp
    per_instance = device.per_node // tp
    instances = math.ceil(replicas / per_instance)
    prices = PriceBook.of(inst)
    hourly = {
        "on_demand": prices.on_demand,
        "spot": prices.spot,
        "committed": prices.committed,
        "mixed": prices.mixed(spec.constraints.mixed_committed_fraction),
    }
    busy = serve.requests_per_s / (replicas * sized.capacity_requests_per_s)
    power_w = (
        replicas * tp * accelerator_power_w(device.tdp_w, device.idle_w, busy)
        + instances * inst.host_power
    )
    month = footprint(power_w, _MONTH_S, region)
    per_hour = hourly[spec.constraints.pricing] * instances
    requests_per_hour = serve.requests_per_s * SECONDS_PER_HOUR
    # the KV cache the running sequences hold at the cap, at their mean length
    kv = engine.max_sequences * (serve.prompt_tokens + serve.output_tokens / 2)
    kv_bytes = kv * engine.kv_bytes_per_token
    bottleneck, verdict = _verdict(sized, serve.p99_latency_s)
    return ServeOption(
        instance=inst.name,
        cloud=inst.cloud,
        region=region.name,
        accelerator=device.accelerator.name,
        accelerators_per_replica=tp,
        replicas_per_instance=per_instance,
        replicas=replicas,
        instances=instances,
        accelerators=instances * device.per_node,
        precision=device.accelerator.compute_precision(serve.precision),
        batch=engine.max_sequences,
        prefill_s=state.prefill_iteration_s,
        decode_step_s=state.iteration_s,
        latency_p99_s=state.latency_p99_s,
        requests_per_s_per_replica=sized.capacity_requests_per_s,
        output_tokens_per_s_per_replica=sized.capacity_requests_per_s * serve.output_tokens,
        memory=MemoryBreakdown(
            weights_gib=engine.weight_bytes / tp / _GIB,
            kv_cache_gib=kv_bytes / tp / _GIB,
            total_gib=(engine.weight_bytes + kv_bytes) / tp / _GIB,
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
        time_s=state.latency_p99_s,
        bottleneck=bottleneck,
        verdict=verdict,
    )


def _verdict(sized: _Sized, slo_s: float) -> tuple[str, str]:
    state, cap = sized.state, sized.engine.max_sequences
    if state.kv_limited:
        return "capacity", (
            f"capacity-bound: the paged KV cache holds {cap} running sequences, which caps "
            f"each replica at {sized.capacity_requests_per_s:.2f} requests/s; more memory "
            f"per replica runs more at once"
        )
    if state.memory_bound:
        return "memory-bandwidth", (
            f"memory-bandwidth-bound: each iteration reads all weights and the running "
            f"sequences' KV cache ({state.iteration_s * 1e3:.1f} ms per token with "
            f"{state.running:.0f} running); more sequences share the reads until the p99 "
            f"objective of {slo_s:g} s stops them"
        )
    return "compute", (
        f"compute-bound: decode and prefill arithmetic outweigh memory traffic; the "
        f"iteration that prefills a prompt takes {state.prefill_iteration_s * 1e3:.0f} ms"
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
