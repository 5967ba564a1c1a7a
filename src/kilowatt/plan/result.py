"""The planner's answer: ranked plans, rejected configurations, a recommendation and an
explanation. ``PlanResult.model_dump_json()`` is the documented ``kilowatt plan --json``.

Every figure is estimated (``method: planned``); units are in the field names.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Bottleneck",
    "CostBreakdown",
    "MemoryBreakdown",
    "OwnershipComparison",
    "PlanResult",
    "Rejection",
    "RentOption",
    "ScheduleChoice",
    "ServeOption",
    "TrainOption",
]

Bottleneck = Literal["compute", "memory-bandwidth", "network", "capacity"]


class _Result(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MemoryBreakdown(_Result):
    """Memory per accelerator in GiB."""

    weights_gib: float
    grads_gib: float = 0.0
    optimizer_gib: float = 0.0
    activations_gib: float = 0.0
    kv_cache_gib: float = 0.0
    total_gib: float
    capacity_gib: float
    """Usable memory: 90% of the device (runtime context and fragmentation take the rest)."""


class CostBreakdown(_Result):
    """Cost in USD under each pricing model, plus storage and egress."""

    on_demand_usd: float
    spot_usd: float
    committed_usd: float
    mixed_usd: float
    storage_usd: float = 0.0
    egress_usd: float = 0.0


class TrainOption(_Result):
    """One feasible training configuration.

    ``time_s``, ``energy_j``, ``carbon_gco2e`` and ``cost_usd`` are for the pricing basis
    of the spec (spot and mixed include preemption overhead); ``costs`` has every basis.
    """

    kind: Literal["train"] = "train"
    method: Literal["planned"] = "planned"
    instance: str
    cloud: str
    region: str
    accelerator: str
    accelerators: int
    nodes: int
    data_parallel: int
    tensor_parallel: int
    pipeline_parallel: int
    zero_stage: int
    recompute: str
    precision: str
    """Format the arithmetic runs in (the requested one, or the part's fallback)."""
    mfu: float
    mfu_source: str
    memory: MemoryBreakdown
    steps: int
    step_time_s: float
    compute_s_per_step: float
    comm_s_per_step: float
    bubble_s_per_step: float
    time_on_demand_s: float
    time_spot_s: float
    spot_checkpoint_interval_s: float | None
    time_s: float
    power_w: float
    energy_j: float
    carbon_gco2e: float
    costs: CostBreakdown
    cost_usd: float
    bottleneck: Bottleneck
    verdict: str


class ServeOption(_Result):
    """One feasible serving configuration (per-month figures assume 730 h)."""

    kind: Literal["serve"] = "serve"
    method: Literal["planned"] = "planned"
    instance: str
    cloud: str
    region: str
    accelerator: str
    accelerators_per_replica: int
    replicas_per_instance: int
    replicas: int
    instances: int
    accelerators: int
    precision: str
    batch: int
    prefill_s: float
    decode_step_s: float
    latency_p99_s: float
    requests_per_s_per_replica: float
    output_tokens_per_s_per_replica: float
    memory: MemoryBreakdown
    cost_usd_per_hour: float
    costs_per_month: CostBreakdown
    cost_usd: float
    """Monthly cost at the spec's pricing basis."""
    cost_usd_per_million_tokens: float
    cost_usd_per_million_requests: float
    power_w: float
    energy_j: float
    """Facility energy per month."""
    energy_j_per_request: float
    carbon_gco2e: float
    """Carbon per month."""
    carbon_gco2e_per_request: float
    time_s: float
    """p99 latency (the time objective for serving)."""
    bottleneck: Bottleneck
    verdict: str


class Rejection(_Result):
    """A configuration the search dropped, and why."""

    configuration: str
    reason: str
    """Short code: memory, deadline, budget, latency, layout, max_accelerators."""
    detail: str


class ScheduleChoice(_Result):
    """When to start the recommended plan under an hourly forecast (``schedule:``).

    ``*_now`` figures are for starting at the earliest allowed moment; costs are the
    electricity at the forecast's prices (``None`` without prices)."""

    minimise: Literal["carbon", "cost"]
    start: str
    end: str
    carbon_gco2e: float
    carbon_gco2e_now: float
    electricity_usd: float | None
    electricity_usd_now: float | None
    saving_fraction: float
    region: str
    source: str


class RentOption(_Result):
    """Renting the owned system's accelerators as one cloud instance type and pricing."""

    instance: str
    cloud: str
    pricing: Literal["on_demand", "spot", "committed"]
    rent_usd_per_hour: float
    """For as many accelerators as the owned system has."""
    rent_usd_per_year: float
    """Pay-as-you-go at the spec's utilisation; committed for every hour."""
    break_even_utilization: float | None
    """Owning is cheaper above it; ``None``: never, or a commitment (paid every hour)."""
    cheaper: Literal["buy", "rent"]


class OwnershipComparison(_Result):
    """Buy versus rent (``buy:``): owning one system against each cloud option."""

    system: str
    price_usd: float
    price_is_estimate: bool
    utilization: float
    own_usd_per_year: float
    amortisation_usd_per_year: float
    hosting_usd_per_year: float
    operations_usd_per_year: float
    energy_usd_per_year: float
    options: list[RentOption]


class PlanResult(_Result):
    """Ranked plans for one workload.

    Attributes:
        name: the spec's name.
        kind: ``train`` or ``serve``.
        objective: what ``plans`` are ranked by (time, cost, energy or carbon).
        pricing: price basis for ``cost_usd`` and the budget.
        workload: headline figures of the workload (FLOPs, tokens, memory of a replica).
        plans: the best feasible plans, best first (one per instance type and size).
        recommendation: ``plans[0]``.
        best_by_objective: the best plan under each objective.
        rejected_by_reason: how many configurations each reason rejected.
        rejected_examples: a few rejected configurations per reason.
        configurations_evaluated: configurations the search costed.
        search_time_s: wall time of the search.
        explanation: short sentences: the choice, its bottleneck, memory, rejections.
        schedule: the start window chosen under the spec's forecast, if it has one.
        ownership: buy versus rent for the spec's ``buy:`` system, if it names one.
    """

    name: str
    kind: Literal["train", "serve"]
    objective: str
    pricing: str
    workload: dict[str, float]
    plans: list[TrainOption] | list[ServeOption]
    recommendation: TrainOption | ServeOption = Field(discriminator="kind")
    best_by_objective: dict[str, TrainOption | ServeOption]
    rejected_by_reason: dict[str, int]
    rejected_examples: list[Rejection]
    configurations_evaluated: int
    search_time_s: float
    explanation: list[str]
    schedule: ScheduleChoice | None = None
    ownership: OwnershipComparison | None = None
