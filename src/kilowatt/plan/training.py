"""Cost one training configuration: instance x nodes x parallel layout.

``evaluate`` checks memory and times a step; ``finish`` prices the result in a region
under every pricing model. Both work on plain dataclasses so the search can cost tens of
thousands of layouts quickly; only the winners become ``TrainOption`` models.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from kilowatt.catalog import Region
from kilowatt.plan.compute import training_flops, training_units
from kilowatt.plan.cost import PriceBook, storage_cost_usd
from kilowatt.plan.device import Device
from kilowatt.plan.energy import accelerator_power_w, footprint
from kilowatt.plan.memory import (
    BYTES_PER_VALUE,
    MEMORY_USABLE_FRACTION,
    StateBytes,
    activation_bytes,
    training_state_bytes,
)
from kilowatt.plan.network import data_parallel_comm_s, tensor_parallel_comm_s
from kilowatt.plan.time import (
    GEMM_HALF_WIDTH,
    RECOMPUTE_FACTOR,
    StepTime,
    checkpoint_overhead_s,
    exposed_comm_s,
    gemm_efficiency,
    pipeline_bubble_fraction,
    time_with_preemptions_s,
    virtual_stages,
)
from kilowatt.spec.plan import PlanSpec

__all__ = ["Candidate", "Finished", "Layout", "TrainContext", "evaluate", "finish", "layouts"]

MfuLookup = Callable[[str, float], tuple[float, str]]


@dataclass(frozen=True)
class TrainContext:
    """Per-spec figures every configuration shares."""

    spec: PlanSpec
    flops_total: float
    steps: int
    sequences_per_step: float
    state: StateBytes
    checkpoint_bytes: float
    mfu_for: MfuLookup
    recompute_modes: tuple[str, ...]
    gemm_half_width: float = GEMM_HALF_WIDTH

    @classmethod
    def of(cls, spec: PlanSpec, mfu_for: MfuLookup) -> TrainContext:
        train = spec.train
        assert train is not None
        model = spec.model
        units = training_units(model, train)
        if model.architecture == "generic":
            per_step, sequences = (
                float(train.global_batch_samples),
                float(train.global_batch_samples),
            )
        else:
            assert model.seq_len is not None
            per_step = float(train.global_batch_tokens)
            sequences = max(1.0, per_step / model.seq_len)
        state = training_state_bytes(model.params, train.precision, train.optimizer)
        full_precision = train.precision in ("fp32", "tf32")
        return cls(
            spec=spec,
            flops_total=training_flops(model, train),
            steps=max(1, math.ceil(units / per_step)),
            sequences_per_step=sequences,
            state=state,
            # fp32 master weights and optimizer states are what a resume needs.
            checkpoint_bytes=state.optimizer + (state.weights if full_precision else 0.0),
            mfu_for=mfu_for,
            recompute_modes=_recompute_order(spec),
        )


@dataclass(frozen=True)
class Layout:
    """Parallel degrees and sharding of one configuration."""

    dp: int
    tp: int
    pp: int
    zero: int
    ep: int = 1
    """Expert parallelism: each expert lives on one in ``ep`` data-parallel ranks."""


@dataclass(frozen=True)
class Candidate:
    """A configuration that fits in memory, with its step time."""

    device: Device
    nodes: int
    layout: Layout
    recompute: str
    precision: str
    mfu: float
    mfu_source: str
    memory: StateBytes
    activation_bytes: float
    step: StepTime
    memory_bound: bool
    gemm_share: float = 1.0
    """Share of the wide-matrix rate this layout's matmul width reaches."""

    @property
    def accelerators(self) -> int:
        return self.nodes * self.device.per_node

    @property
    def memory_total_bytes(self) -> float:
        return self.memory.total + self.activation_bytes


@dataclass(frozen=True)
class Finished:
    """A candidate priced in one region, with every pricing model's figures."""

    candidate: Candidate
    region: Region
    time_on_demand_s: float
    time_spot_s: float
    time_mixed_s: float
    spot_interval_s: float
    power_w: float
    costs: dict[str, float]
    storage_usd: float
    egress_usd: float
    time_s: float
    cost_usd: float
    energy_j: float
    carbon_gco2e: float


def layouts(device: Device, nodes: int, ctx: TrainContext) -> Iterator[Layout]:
    """Every tensor x pipeline x data-parallel x ZeRO layout of ``nodes`` instances."""
    par, model = ctx.spec.parallelism, ctx.spec.model
    total = nodes * device.per_node
    transformer = model.architecture != "generic"
    tps = _powers_of_two(min(device.per_node, par.max_tensor_parallel)) if transformer else [1]
    pps = _powers_of_two(min(par.max_pipeline_parallel, model.layers or 1)) if transformer else [1]
    for tp in tps:
        if transformer and (model.heads or 1) % tp:
            continue  # heads split evenly across tensor-parallel ranks
        for pp in pps:
            if total % (tp * pp):
                continue
            dp = total // (tp * pp)
            stages = sorted(set(par.zero_stages)) if dp > 1 else [0]
            ep = expert_parallel_degree(model.experts or 1, dp)
            for zero in stages:
                yield Layout(dp=dp, tp=tp, pp=pp, zero=zero, ep=ep)


def expert_parallel_degree(experts: int, dp: int) -> int:
    """The expert-parallel degree practitioners pick: the largest power of two dividing
    both ``dp`` and the expert count, so every rank holds whole experts (1 for dense)."""
    ep = 1
    while dp % (ep * 2) == 0 and experts % (ep * 2) == 0:
        ep *= 2
    return ep


def sharded_state(ctx: TrainContext, layout: Layout) -> StateBytes:
    """Model state one accelerator holds: dense weights split by tensor x pipeline, routed
    experts also by ``ep``, and ZeRO over the ranks that hold the same weights."""
    share = ctx.spec.model.expert_params / ctx.spec.model.params
    model_parallel = layout.tp * layout.pp
    dense = ctx.state.scaled(1.0 - share).sharded(layout.dp, layout.zero, model_parallel)
    if share == 0.0:
        return dense
    experts = ctx.state.scaled(share).sharded(
        max(1, layout.dp // layout.ep), layout.zero, model_parallel * layout.ep
    )
    return dense + experts


def evaluate(device: Device, nodes: int, layout: Layout, ctx: TrainContext) -> Candidate | str:
    """Fit and time one configuration; a string says why it was rejected."""
    spec, train = ctx.spec, ctx.spec.train
    assert train is not None
    microbatches = ctx.sequences_per_step / (layout.dp * train.micro_batch)
    if microbatches < 1:
        return (
            f"layout: a global batch of {ctx.sequences_per_step:g} sequences cannot feed "
            f"{layout.dp} data-parallel ranks x micro_batch {train.micro_batch}"
        )
    sharded = sharded_state(ctx, layout)
    usable = device.memory_bytes * MEMORY_USABLE_FRACTION
    previous: tuple[str, float] | None = None
    for mode in ctx.recompute_modes:
        act = activation_bytes(
            spec.model,
            train.micro_batch,
            tp=layout.tp,
            pp=layout.pp,
            recompute=mode,
            precision=train.precision,
            microbatches_in_flight=math.ceil(microbatches),
        )
        if sharded.total + act <= usable:
            factor = RECOMPUTE_FACTOR[mode]
            if mode == "full" and previous is not None:
                mode, factor, act = _block_recompute(previous, act, usable - sharded.total)
            return _timed(device, nodes, layout, (mode, factor), sharded, act, microbatches, ctx)
        previous = (mode, act)
    return (
        f"memory: needs {(sharded.total + act) / 2**30:.1f} GiB per accelerator even with "
        f"{mode} recompute; {device.accelerator.name} has {usable / 2**30:.1f} GiB usable"
    )


def _block_recompute(
    lighter: tuple[str, float], full_act: float, room: float
) -> tuple[str, float, float]:
    """Full recompute of only as many layers as memory needs (Megatron-LM's
    ``--recompute-method block``), the rest kept at the ``lighter`` mode.

    Returns the mode's label, its arithmetic factor and the activation bytes."""
    mode, act = lighter
    fraction = min(1.0, max(0.0, (act - room) / (act - full_act)))
    if fraction >= 1.0:
        return "full", RECOMPUTE_FACTOR["full"], full_act
    factor = RECOMPUTE_FACTOR[mode] + fraction * (RECOMPUTE_FACTOR["full"] - RECOMPUTE_FACTOR[mode])
    label = f"full on {fraction:.0%} of layers, {mode} on the rest"
    return label, factor, act - fraction * (act - full_act)


def _timed(
    device: Device,
    nodes: int,
    layout: Layout,
    recompute: tuple[str, float],
    sharded: StateBytes,
    act: float,
    microbatches: float,
    ctx: TrainContext,
) -> Candidate:
    spec, train = ctx.spec, ctx.spec.train
    assert train is not None
    acc = device.accelerator
    precision = acc.compute_precision(train.precision)
    mfu, source = ctx.mfu_for(acc.name, acc.default_mfu(train.precision))
    if source == "catalog default":
        source = acc.mfu_basis(train.precision)
    peak = device.peak_flops(train.precision)
    roofline = min(peak, _intensity(ctx, layout) * device.bandwidth_bytes_per_s)
    gemm_share = gemm_efficiency(_gemm_width(ctx, layout), ctx.gemm_half_width)
    attainable = roofline * gemm_share
    flops_step = ctx.flops_total / ctx.steps * recompute[1]
    compute_s = flops_step / (nodes * device.per_node * attainable * mfu)
    chunks = virtual_stages(spec.model.layers or 1, layout.pp, microbatches)
    bubble_s = compute_s * pipeline_bubble_fraction(layout.pp, microbatches, chunks)
    overlap = spec.parallelism.comm_overlap
    tensor_s = _tensor_comm_s(device, layout, microbatches, ctx) + exposed_comm_s(
        chunks * _pipeline_comm_s(device, layout, microbatches, ctx)
        + _expert_comm_s(device, layout, microbatches, ctx),
        compute_s,
        overlap,
    )
    data_s = exposed_comm_s(_data_comm_s(device, nodes, layout, ctx), compute_s, overlap)
    return Candidate(
        device=device,
        nodes=nodes,
        layout=layout,
        recompute=recompute[0],
        precision=precision,
        mfu=mfu,
        mfu_source=source,
        memory=sharded,
        activation_bytes=act,
        step=StepTime(compute_s, bubble_s, tensor_s, data_s),
        memory_bound=roofline < peak,
        gemm_share=gemm_share,
    )


def _gemm_width(ctx: TrainContext, layout: Layout) -> float:
    """Narrowest side of the layer's main matrix multiplies on one rank: the hidden size
    split by tensor parallelism, or a routed expert's feed-forward width (three matrices of
    ``hidden x width`` per expert)."""
    model = ctx.spec.model
    if model.architecture == "generic" or not (model.hidden and model.layers):
        return math.inf
    width = model.hidden / layout.tp
    if model.expert_params and model.experts:
        expert_width = model.expert_params / (model.experts * model.layers * 3 * model.hidden)
        width = min(width, expert_width / layout.tp)
    return width


def _intensity(ctx: TrainContext, layout: Layout) -> float:
    """FLOPs per byte of the MLP matmul (tokens x h by h x 4h/tp, 16-bit operands)."""
    model, train = ctx.spec.model, ctx.spec.train
    assert train is not None
    if model.architecture == "generic" or not (model.hidden and model.seq_len):
        return math.inf  # no shape to judge by: assume the kernels are compute-bound
    t, h, n = train.micro_batch * model.seq_len, model.hidden, 4 * model.hidden / layout.tp
    return (2.0 * t * h * n) / (2.0 * (t * h + h * n + t * n))


def _tensor_comm_s(device: Device, layout: Layout, microbatches: float, ctx: TrainContext) -> float:
    model, train = ctx.spec.model, ctx.spec.train
    assert train is not None
    if layout.tp <= 1 or not (model.seq_len and model.hidden and model.layers):
        return 0.0
    act = model.seq_len * train.micro_batch * model.hidden * BYTES_PER_VALUE["bf16"]
    per_micro = tensor_parallel_comm_s(
        act, model.layers / layout.pp, layout.tp, device.intra_bytes_per_s
    )
    return per_micro * math.ceil(microbatches)


def _pipeline_comm_s(
    device: Device, layout: Layout, microbatches: float, ctx: TrainContext
) -> float:
    """Activations forward and their gradients back across each stage boundary."""
    model, train = ctx.spec.model, ctx.spec.train
    assert train is not None
    if layout.pp <= 1 or not (model.seq_len and model.hidden):
        return 0.0
    act = model.seq_len * train.micro_batch * model.hidden * BYTES_PER_VALUE["bf16"] / layout.tp
    if layout.tp * layout.pp <= device.per_node:
        link = device.intra_bytes_per_s
    else:  # stages on different nodes share the node's network
        link = device.instance.network_bytes_per_s / device.per_node
    return 2.0 * act * math.ceil(microbatches) / link


def _expert_comm_s(device: Device, layout: Layout, microbatches: float, ctx: TrainContext) -> float:
    """Mixture-of-experts all-to-all: every token goes to its ``k`` experts and comes back,
    in the forward pass and again for the gradients (4 exchanges per layer).

    Within a node the exchange runs over the accelerator interconnect. Across nodes a token
    crosses the fabric once per distinct remote node holding one of its experts, then fans
    out inside that node (hierarchical dispatch, as DeepEP and Megatron-LM do): with ``n``
    nodes in the expert group that is ``n·(1-(1-1/n)^k)`` copies. fp8 training dispatches
    in fp8 and combines in bf16."""
    model, train = ctx.spec.model, ctx.spec.train
    assert train is not None
    if layout.ep <= 1 or not (model.experts_per_token and model.seq_len and model.hidden):
        return 0.0
    tokens = model.seq_len * train.micro_batch * math.ceil(microbatches)
    layers = (model.layers or 1) / layout.pp
    k = model.experts_per_token
    value_bytes = 1.5 if train.precision == "fp8" else 2.0  # dispatch and combine averaged
    # Megatron orders ranks tensor-first, then data: a node holds per_node/tp of a group.
    group_per_node = max(1, device.per_node // layout.tp)
    if layout.ep <= group_per_node:
        copies, link = k * (layout.ep - 1) / layout.ep, device.intra_bytes_per_s
    else:
        group_nodes = layout.ep / group_per_node
        copies = group_nodes * (1.0 - (1.0 - 1.0 / group_nodes) ** k)
        copies *= (group_nodes - 1.0) / group_nodes  # the home node's share stays local
        link = device.instance.network_bytes_per_s / device.per_node
    return 4.0 * layers * tokens * copies * model.hidden * value_bytes / link


def _data_comm_s(device: Device, nodes: int, layout: Layout, ctx: TrainContext) -> float:
    share = ctx.spec.model.expert_params / ctx.spec.model.params
    # Routed experts' gradients are reduced only among the dp/ep ranks that hold them.
    grad_bytes = ctx.state.grads * (1.0 - share + share / layout.ep) / (layout.tp * layout.pp)
    shard_ranks = layout.tp * layout.pp
    if shard_ranks <= device.per_node:
        per_node, dp_nodes = device.per_node // shard_ranks, nodes
    else:
        per_node, dp_nodes = 1, layout.dp
    groups_per_node = max(1, device.per_node // per_node)
    # Every data-parallel group of the node shares its network interface.
    network = device.instance.network_bytes_per_s / groups_per_node
    return data_parallel_comm_s(
        grad_bytes, layout.zero, per_node, dp_nodes, device.intra_bytes_per_s, network
    )


def finish(candidate: Candidate, regions: list[Region], ctx: TrainContext) -> list[Finished]:
    """Price ``candidate`` in each of ``regions``: times, costs, energy and carbon."""
    train, limits = ctx.spec.train, ctx.spec.constraints
    assert train is not None
    inst, nodes = candidate.device.instance, candidate.nodes
    work_s = ctx.steps * candidate.step.total_s
    ckpt_s = ctx.checkpoint_bytes / (nodes * train.checkpoint_write_gb_per_s * 1e9)
    on_demand_s = work_s + checkpoint_overhead_s(work_s, ckpt_s, train.checkpoint_interval_s)
    rate = inst.spot_interruptions_per_hour / 3600.0
    spot_s, interval_s = time_with_preemptions_s(work_s, ckpt_s, nodes * rate, train.restart_s)
    spot_nodes = (1.0 - limits.mixed_committed_fraction) * nodes
    mixed_s, _ = time_with_preemptions_s(work_s, ckpt_s, spot_nodes * rate, train.restart_s)
    mixed_s = max(mixed_s, on_demand_s) if spot_nodes == 0 else mixed_s
    prices = PriceBook.of(inst)
    costs = {
        "on_demand": prices.compute_cost_usd(prices.on_demand, nodes, on_demand_s),
        "spot": prices.compute_cost_usd(prices.spot, nodes, spot_s),
        "committed": prices.compute_cost_usd(prices.committed, nodes, on_demand_s),
        "mixed": prices.compute_cost_usd(
            prices.mixed(limits.mixed_committed_fraction), nodes, mixed_s
        ),
    }
    basis_s = {"spot": spot_s, "mixed": mixed_s}.get(limits.pricing, on_demand_s)
    stored_gb = train.dataset_gb + train.checkpoints_kept * ctx.checkpoint_bytes / 1e9
    device = candidate.device
    power_w = (
        candidate.accelerators
        * accelerator_power_w(device.tdp_w, device.idle_w, candidate.step.busy_fraction)
        + nodes * inst.host_power
    )
    finished = []
    for region in regions:
        finite = math.isfinite(basis_s)
        storage = storage_cost_usd(stored_gb, basis_s, region) if finite else math.inf
        egress = train.egress_gb * region.egress_usd_per_gb
        foot = footprint(power_w, basis_s, region)
        finished.append(
            Finished(
                candidate=candidate,
                region=region,
                time_on_demand_s=on_demand_s,
                time_spot_s=spot_s,
                time_mixed_s=mixed_s,
                spot_interval_s=interval_s,
                power_w=power_w,
                costs=costs,
                storage_usd=storage,
                egress_usd=egress,
                time_s=basis_s,
                cost_usd=costs[limits.pricing] + storage + egress,
                energy_j=foot.energy_j,
                carbon_gco2e=foot.carbon_gco2e,
            )
        )
    return finished


def _recompute_order(spec: PlanSpec) -> tuple[str, ...]:
    if spec.model.architecture == "generic":
        return ("none",)  # no layer structure to recompute by
    return tuple(m for m in ("none", "selective", "full") if m in spec.parallelism.recompute)


def _powers_of_two(limit: int) -> list[int]:
    return [2**i for i in range(int(math.log2(max(1, limit))) + 1)]
