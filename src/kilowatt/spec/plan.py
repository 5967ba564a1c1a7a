"""Plan specs: the workload the planner sizes (model shape, training or serving, limits).

A plan spec is a YAML file::

    name: 2b-transformer
    model: {params: 2.0e9, layers: 24, hidden: 2560, heads: 20, seq_len: 2048}
    train: {tokens: 40e9, precision: bf16, optimizer: adamw}
    constraints: {deadline_h: 168, max_accelerators: 64}
    objective: cost
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import Field, field_validator, model_validator

from kilowatt.spec.base import Spec

__all__ = [
    "Objective",
    "Ownership",
    "Parallelism",
    "PlanConstraints",
    "PlanModel",
    "PlanSpec",
    "Pricing",
    "Schedule",
    "ServingWorkload",
    "TrainingWorkload",
]

Objective = Literal["time", "cost", "energy", "carbon"]
Pricing = Literal["on_demand", "spot", "committed", "mixed"]


class PlanModel(Spec):
    """The model's shape.

    ``architecture: dense`` and ``moe`` are decoder transformers (compute 6·N·D plus the
    attention term; ``moe`` computes with ``active_params`` and stores ``params``);
    ``generic`` is any other network, described by FLOPs and activation bytes per sample.

    Attributes:
        params: total parameters.
        active_params: parameters used per token (mixture-of-experts only).
        layers, hidden, heads, seq_len: transformer depth, width, attention heads, context.
        kv_heads: key/value heads (grouped-query attention); defaults to ``heads``.
        experts: routed experts per mixture-of-experts layer (``moe`` only).
        experts_per_token: routed experts each token visits (``moe`` only; top-k).
        forward_flops_per_sample: forward-pass FLOPs of one sample (generic models).
        activation_bytes_per_sample: activation memory of one sample in training (generic).
        model_class: calibration key (measured MFU is stored per accelerator and class).
    """

    name: str = "model"
    architecture: Literal["dense", "moe", "generic"] = "dense"
    model_class: str | None = None
    params: float = Field(gt=0)
    active_params: float | None = Field(default=None, gt=0)
    layers: int | None = Field(default=None, gt=0)
    hidden: int | None = Field(default=None, gt=0)
    heads: int | None = Field(default=None, gt=0)
    kv_heads: int | None = Field(default=None, gt=0)
    experts: int | None = Field(default=None, gt=0)
    experts_per_token: int | None = Field(default=None, gt=0)
    seq_len: int | None = Field(default=None, gt=0)
    forward_flops_per_sample: float | None = Field(default=None, gt=0)
    activation_bytes_per_sample: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _check_shape(self) -> PlanModel:
        if self.architecture == "generic":
            if self.forward_flops_per_sample is None:
                raise ValueError("a generic model needs forward_flops_per_sample")
            return self
        missing = [k for k in ("layers", "hidden", "heads", "seq_len") if getattr(self, k) is None]
        if missing:
            raise ValueError(f"a {self.architecture} transformer needs {', '.join(missing)}")
        if self.architecture == "moe" and self.active_params is None:
            raise ValueError("a moe model needs active_params (parameters used per token)")
        if self.experts_per_token and self.experts and self.experts_per_token > self.experts:
            raise ValueError(
                f"experts_per_token ({self.experts_per_token}) cannot exceed experts "
                f"({self.experts})"
            )
        if self.active_params is not None and self.active_params > self.params:
            raise ValueError(
                f"active_params ({self.active_params:g}) cannot exceed params ({self.params:g})"
            )
        if self.kv_heads is not None and self.heads is not None and self.heads % self.kv_heads:
            raise ValueError(
                f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})"
            )
        return self

    @property
    def calibration_class(self) -> str:
        """Key for calibration lookups: ``model_class`` or ``transformer`` / ``generic``."""
        if self.model_class:
            return self.model_class
        return "generic" if self.architecture == "generic" else "transformer"

    @property
    def expert_params(self) -> float:
        """Parameters in routed experts (0 for dense models), from ``params``,
        ``active_params`` and the routing: ``active = shared + k·(params - shared)/E``."""
        if self.architecture != "moe" or not (self.experts and self.experts_per_token):
            return 0.0
        assert self.active_params is not None
        share = self.experts_per_token / self.experts
        shared = (self.active_params - share * self.params) / (1.0 - share)
        return self.params - max(0.0, shared)

    @property
    def compute_params(self) -> float:
        """Parameters that do arithmetic for each token (active ones for MoE)."""
        return self.active_params if self.active_params is not None else self.params


class TrainingWorkload(Spec):
    """What to train: amount of data, batch, precision, optimizer, checkpoint policy.

    Attributes:
        tokens: training tokens (transformers).
        samples: samples per epoch (generic models); ``epochs`` passes over them.
        global_batch_tokens / global_batch_samples: batch per optimizer step.
        micro_batch: sequences (or samples) per accelerator per forward/backward pass.
        precision: compute precision (``bf16``/``fp16``/``fp8`` are mixed precision).
        optimizer: ``adam``/``adamw`` (2 fp32 states), ``sgd-momentum`` (1), ``sgd`` (0).
        mfu: achieved fraction of peak; overrides calibration and catalog defaults.
        dataset_gb: stored training data, 1e9 bytes (storage cost).
        checkpoints_kept: checkpoints kept in storage at a time.
        checkpoint_write_gb_per_s: checkpoint write bandwidth per node, 1e9 bytes/s.
        checkpoint_interval_s: checkpoint period on reliable (on-demand) capacity.
        restart_s: time to replace a preempted node and reload the last checkpoint.
        egress_gb: data moved out of the cloud at the end (e.g. the final model), 1e9 bytes.
    """

    tokens: float | None = Field(default=None, gt=0)
    samples: float | None = Field(default=None, gt=0)
    epochs: float = Field(default=1.0, gt=0)
    global_batch_tokens: int = Field(default=2**20, gt=0)
    global_batch_samples: int = Field(default=256, gt=0)
    micro_batch: int = Field(default=1, gt=0)
    precision: Literal["fp32", "tf32", "bf16", "fp16", "fp8"] = "bf16"
    optimizer: Literal["adam", "adamw", "sgd", "sgd-momentum"] = "adamw"
    mfu: float | None = Field(default=None, gt=0, le=1)
    dataset_gb: float = Field(default=0.0, ge=0)
    checkpoints_kept: int = Field(default=2, ge=0)
    checkpoint_write_gb_per_s: float = Field(default=1.0, gt=0)
    checkpoint_interval_s: float = Field(default=3600.0, gt=0)
    restart_s: float = Field(default=600.0, ge=0)
    egress_gb: float = Field(default=0.0, ge=0)


class ServingWorkload(Spec):
    """What to serve: request rate, request shape and the latency objective.

    Attributes:
        requests_per_s: sustained request rate to serve.
        prompt_tokens: input tokens per request.
        output_tokens: generated tokens per request.
        p99_latency_s: 99th-percentile end-to-end latency objective.
        precision: weight and compute precision.
        max_batch: largest batch a replica may run.
        max_utilization: target load per replica (head-room for bursts).
    """

    requests_per_s: float = Field(gt=0)
    prompt_tokens: int = Field(default=512, gt=0)
    output_tokens: int = Field(default=256, gt=0)
    p99_latency_s: float = Field(gt=0)
    precision: Literal["fp32", "bf16", "fp16", "fp8", "int8"] = "bf16"
    max_batch: int = Field(default=256, gt=0)
    max_utilization: float = Field(default=0.7, gt=0, le=1)


class Parallelism(Spec):
    """Which parallel layouts the search may use.

    Attributes:
        zero_stages: ZeRO stages to try (3 is FSDP full sharding; 0 is plain data parallel).
        recompute: activation recomputation modes to try (the cheapest that fits wins).
        max_tensor_parallel: largest tensor-parallel degree (kept within one node).
        max_pipeline_parallel: largest pipeline-parallel degree.
        comm_overlap: fraction of gradient communication hidden behind the backward pass.
    """

    zero_stages: list[Literal[0, 1, 2, 3]] = Field(default=[0, 1, 2, 3], min_length=1)
    recompute: list[Literal["none", "selective", "full"]] = Field(
        default=["none", "selective", "full"], min_length=1
    )
    max_tensor_parallel: int = Field(default=8, gt=0)
    max_pipeline_parallel: int = Field(default=8, gt=0)
    comm_overlap: float = Field(default=0.5, ge=0, le=1)


class PlanConstraints(Spec):
    """Limits every plan must meet, and the price basis for cost and budget.

    Attributes:
        deadline_h: longest acceptable training time, hours.
        budget_usd: most the job (or a month of serving) may cost.
        max_accelerators: most accelerators in one plan.
        clouds / regions / accelerators / instances: allow-lists (empty = all).
        pricing: price used for ranking and the budget (``mixed`` = committed baseline
            plus spot burst).
        mixed_committed_fraction: share of accelerator-hours on committed capacity in
            ``mixed`` pricing.
    """

    deadline_h: float | None = Field(default=None, gt=0)
    budget_usd: float | None = Field(default=None, gt=0)
    max_accelerators: int | None = Field(default=None, gt=0)
    clouds: list[str] = Field(default_factory=list)
    regions: list[str] = Field(default_factory=list)
    accelerators: list[str] = Field(default_factory=list)
    instances: list[str] = Field(default_factory=list)
    pricing: Pricing = "on_demand"
    mixed_committed_fraction: float = Field(default=0.5, ge=0, le=1)


class Schedule(Spec):
    """When to run a training job: an hourly forecast and the window it must run in.

    Attributes:
        forecast_csv: hourly forecast file (region, hour, gco2e_per_kwh[, price_usd_per_kwh]).
        forecast_zone: or an Electricity Maps zone (key in ``ELECTRICITY_MAPS_API_KEY``).
        region: the forecast's region to read (default: the recommended plan's region).
        not_before: earliest start (default: now).
        deadline: the job must end by then.
        minimise: ``carbon`` or ``cost`` (electricity at the forecast's prices).
    """

    forecast_csv: str | None = None
    forecast_zone: str | None = None
    region: str | None = None
    not_before: dt.datetime | None = None
    deadline: dt.datetime
    minimise: Literal["carbon", "cost"] = "carbon"

    @field_validator("not_before", "deadline")
    @classmethod
    def _utc(cls, value: dt.datetime | None) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)  # naive times are UTC
        return value

    @model_validator(mode="after")
    def _check(self) -> Schedule:
        if (self.forecast_csv is None) == (self.forecast_zone is None):
            raise ValueError("give exactly one of forecast_csv or forecast_zone")
        if self.not_before is not None and self.not_before >= self.deadline:
            raise ValueError(
                f"not_before ({self.not_before.isoformat()}) must be before the deadline "
                f"({self.deadline.isoformat()})"
            )
        return self


class Ownership(Spec):
    """Buy versus rent: the system to buy and what owning it costs besides its price.

    Attributes:
        system: catalog purchase option (``kilowatt catalog``'s purchases, e.g. ``dgx-a100``).
        years: straight-line amortisation period of the purchase price.
        utilization: share of the hours the system does useful work (renting pays only those).
        tariff_usd_per_kwh: electricity price at the site.
        pue: the site's power usage effectiveness (default: the catalog default).
        hosting_usd_per_kw_month: rack space, power delivery and cooling plant, per kW of
            the system's maximum draw per month (energy excluded).
        operations_fraction_per_year: support contracts, spares and staff time per year, as
            a share of the purchase price.
        cost_of_capital: yearly interest on the money spent (0 = plain straight-line).
    """

    system: str
    years: float = Field(default=4.0, gt=0)
    utilization: float = Field(default=0.7, gt=0, le=1)
    tariff_usd_per_kwh: float = Field(ge=0)
    pue: float | None = Field(default=None, ge=1)
    hosting_usd_per_kw_month: float = Field(default=150.0, ge=0)
    operations_fraction_per_year: float = Field(default=0.08, ge=0)
    cost_of_capital: float = Field(default=0.0, ge=0)


class PlanSpec(Spec):
    """A workload to plan: a model and either ``train`` or ``serve``.

    >>> spec = PlanSpec.model_validate({"model": {"architecture": "generic", "params": 1e6,
    ...     "forward_flops_per_sample": 1e9}, "train": {"samples": 5e4}})
    >>> spec.objective
    'cost'
    """

    name: str = "plan"
    model: PlanModel
    train: TrainingWorkload | None = None
    serve: ServingWorkload | None = None
    parallelism: Parallelism = Parallelism()
    constraints: PlanConstraints = PlanConstraints()
    schedule: Schedule | None = None
    buy: Ownership | None = None
    objective: Objective = "cost"
    top: int = Field(default=5, gt=0)

    @model_validator(mode="after")
    def _check_workload(self) -> PlanSpec:
        if (self.train is None) == (self.serve is None):
            raise ValueError("give exactly one of train: or serve:")
        if self.train is not None:
            generic = self.model.architecture == "generic"
            if generic and self.train.samples is None:
                raise ValueError("training a generic model needs train.samples")
            if not generic and self.train.tokens is None:
                raise ValueError("training a transformer needs train.tokens")
        if self.serve is not None and self.schedule is not None:
            raise ValueError("schedule: is for training jobs; serving runs all the time")
        if self.serve is not None and self.model.architecture == "generic":
            raise ValueError("serving plans need a transformer model (dense or moe)")
        return self
