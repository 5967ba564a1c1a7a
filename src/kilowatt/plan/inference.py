"""Serving estimates: prefill, decode, KV cache, throughput, replicas, cost and energy.

Prefill processes the prompt in large matmuls and is compute-bound; each decode step
reads every weight and the whole KV cache once, so at small batches it is bound by
memory bandwidth (Pope et al. 2022, "Efficiently Scaling Transformer Inference"). A
replica runs batches of ``b`` requests; a request waits for the batch in flight with
probability equal to the replica's utilisation, so ``p99 ≈ L_b·(1 + ρ)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kilowatt.plan.compute import forward_flops_per_token
from kilowatt.plan.device import Device
from kilowatt.plan.memory import BYTES_PER_VALUE, MEMORY_USABLE_FRACTION, kv_cache_bytes_per_token
from kilowatt.spec.plan import PlanModel, ServingWorkload

__all__ = [
    "BANDWIDTH_EFFICIENCY",
    "ServeEstimate",
    "decode_step_s",
    "estimate_replica",
    "kv_cache_precision",
    "prefill_s",
    "replicas_needed",
    "tensor_parallel_step_s",
    "weight_bytes",
]

# Decode kernels reach about 80% of peak memory bandwidth on current GPUs.
BANDWIDTH_EFFICIENCY = 0.8
# Latency of one small all-reduce inside a node (NVLink/PCIe launch + sync).
_ALLREDUCE_LATENCY_S = 10e-6


def weight_bytes(model: PlanModel, precision: str) -> float:
    """Bytes of the weights in the serving precision."""
    return model.params * BYTES_PER_VALUE[precision]


def kv_cache_precision(precision: str) -> str:
    """Precision of the KV cache when serving in ``precision`` (bf16 unless fp32)."""
    return "fp32" if precision == "fp32" else "bf16"


def prefill_s(
    model: PlanModel, prompt_tokens: int, batch: int, flops_per_s: float, bytes_per_s: float
) -> float:
    """Time to process ``batch`` prompts: compute-bound, never faster than one weight read."""
    flops = batch * prompt_tokens * forward_flops_per_token(model, prompt_tokens / 2)
    return max(flops / flops_per_s, model.params * 2 / bytes_per_s)


def decode_step_s(
    model: PlanModel,
    batch: int,
    context_tokens: float,
    precision: str,
    flops_per_s: float,
    bytes_per_s: float,
) -> tuple[float, bool]:
    """One decode step of ``batch`` sequences at ``context_tokens``; and whether memory-bound.

    >>> m = PlanModel(params=7e9, layers=32, hidden=4096, heads=32, seq_len=4096)
    >>> round(decode_step_s(m, 1, 0, "bf16", 1e15, 2e12)[0] * 1e3, 2)  # 14 GB / 2 TB/s
    7.0
    """
    kv = batch * context_tokens * kv_cache_bytes_per_token(model, kv_cache_precision(precision))
    memory_s = (weight_bytes(model, precision) + kv) / bytes_per_s
    compute_s = batch * forward_flops_per_token(model, context_tokens) / flops_per_s
    return max(memory_s, compute_s), memory_s >= compute_s


@dataclass(frozen=True)
class ServeEstimate:
    """One replica of ``tp`` accelerators running batches of ``batch``."""

    tp: int
    batch: int
    prefill_s: float
    decode_step_s: float
    batch_latency_s: float
    latency_p99_s: float
    requests_per_s: float
    weights_bytes: float
    kv_bytes: float
    memory_bound: bool

    @property
    def memory_per_accelerator_bytes(self) -> float:
        return (self.weights_bytes + self.kv_bytes) / self.tp


def estimate_replica(
    device: Device, tp: int, batch: int, serve: ServingWorkload, model: PlanModel, mfu: float
) -> ServeEstimate | str:
    """Latency and throughput of one replica, or why it does not work."""
    weights = weight_bytes(model, serve.precision)
    context = serve.prompt_tokens + serve.output_tokens
    kv = batch * context * kv_cache_bytes_per_token(model, kv_cache_precision(serve.precision))
    usable = device.memory_bytes * MEMORY_USABLE_FRACTION
    if (weights + kv) / tp > usable:
        return (
            f"memory: weights {weights / 2**30:.1f} GiB + KV cache {kv / 2**30:.1f} GiB over "
            f"{tp} x {device.accelerator.name} exceed {usable * tp / 2**30:.1f} GiB usable"
        )
    flops_per_s = tp * device.peak_flops(serve.precision) * mfu
    bytes_per_s = tp * device.bandwidth_bytes_per_s * BANDWIDTH_EFFICIENCY
    first = prefill_s(model, serve.prompt_tokens, batch, flops_per_s, bytes_per_s)
    mean_context = serve.prompt_tokens + serve.output_tokens / 2
    step, memory_bound = decode_step_s(
        model, batch, mean_context, serve.precision, flops_per_s, bytes_per_s
    )
    step += tensor_parallel_step_s(model, batch, tp, device)
    batch_s = first + serve.output_tokens * step
    return ServeEstimate(
        tp=tp,
        batch=batch,
        prefill_s=first,
        decode_step_s=step,
        batch_latency_s=batch_s,
        latency_p99_s=batch_s * (1.0 + serve.max_utilization),
        requests_per_s=batch / batch_s,
        weights_bytes=weights,
        kv_bytes=kv,
        memory_bound=memory_bound,
    )


def tensor_parallel_step_s(model: PlanModel, batch: int, tp: int, device: Device) -> float:
    """Two all-reduces per layer of ``batch x hidden`` activations per decode step."""
    if tp <= 1:
        return 0.0
    assert model.layers and model.hidden
    size = batch * model.hidden * 2.0
    per = _ALLREDUCE_LATENCY_S + 2.0 * size * (tp - 1) / tp / device.intra_bytes_per_s
    return 2.0 * model.layers * per


def replicas_needed(requests_per_s: float, per_replica_rps: float, max_utilization: float) -> int:
    """Replicas so that each runs at no more than ``max_utilization`` of its throughput."""
    return max(1, math.ceil(requests_per_s / (per_replica_rps * max_utilization) - 1e-9))
