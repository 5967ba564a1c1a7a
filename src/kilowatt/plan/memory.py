"""Memory per accelerator: weights, gradients, optimizer states and activations.

Mixed precision keeps 16-bit weights and gradients plus an fp32 master copy next to the
optimizer states, so AdamW costs 2 + 2 + 4 + 4 + 4 = 16 bytes per parameter before
activations (Rajbhandari et al. 2020, ZeRO). ZeRO stage 1 shards optimizer states over
the data-parallel group, stage 2 also gradients, stage 3 (FSDP) also weights. Activations
follow Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer
Models"), with tensor and sequence parallelism dividing them by the tensor degree.
"""

from __future__ import annotations

from dataclasses import dataclass

from kilowatt.spec.plan import PlanModel

__all__ = [
    "BYTES_PER_VALUE",
    "MEMORY_USABLE_FRACTION",
    "StateBytes",
    "activation_bytes",
    "kv_cache_bytes_per_token",
    "training_state_bytes",
]

BYTES_PER_VALUE = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1}
# Runtime context, allocator fragmentation and workspaces take roughly a tenth of device
# memory in practice; plans must fit in the rest.
MEMORY_USABLE_FRACTION = 0.9
_OPTIMIZER_STATES = {"adam": 2, "adamw": 2, "sgd-momentum": 1, "sgd": 0}


@dataclass(frozen=True)
class StateBytes:
    """Bytes of model state (weights, gradients, optimizer states incl. master weights)."""

    weights: float
    grads: float
    optimizer: float

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.optimizer

    def scaled(self, fraction: float) -> StateBytes:
        """The state of ``fraction`` of the parameters."""
        return StateBytes(self.weights * fraction, self.grads * fraction, self.optimizer * fraction)

    def __add__(self, other: StateBytes) -> StateBytes:
        return StateBytes(
            self.weights + other.weights, self.grads + other.grads, self.optimizer + other.optimizer
        )

    def sharded(self, dp: int, zero_stage: int, model_parallel: int) -> StateBytes:
        """State held by one accelerator under tensor x pipeline and ZeRO sharding."""
        mp = float(model_parallel)
        return StateBytes(
            weights=self.weights / mp / (dp if zero_stage >= 3 else 1),
            grads=self.grads / mp / (dp if zero_stage >= 2 else 1),
            optimizer=self.optimizer / mp / (dp if zero_stage >= 1 else 1),
        )


def training_state_bytes(params: float, precision: str, optimizer: str) -> StateBytes:
    """Model state of training ``params`` parameters.

    >>> training_state_bytes(7e9, "bf16", "adamw").total / 7e9
    16.0
    """
    full_precision = precision in ("fp32", "tf32")
    # fp8 training keeps 16-bit weights and gradients; only the matmul inputs are 8-bit.
    value_bytes = 4 if full_precision else 2
    master_bytes = 0 if full_precision else 4
    states = _OPTIMIZER_STATES[optimizer] * 4
    return StateBytes(
        weights=params * value_bytes,
        grads=params * value_bytes,
        optimizer=params * (states + master_bytes),
    )


def activation_bytes(
    model: PlanModel,
    micro_batch: int,
    *,
    tp: int = 1,
    pp: int = 1,
    recompute: str = "none",
    precision: str = "bf16",
    microbatches_in_flight: int = 1,
) -> float:
    """Activation memory on the busiest accelerator (the first pipeline stage).

    Per layer (16-bit, Korthikanti et al. 2022): ``s·b·h·(34 + 5·a·s/h) / t`` with no
    recomputation, ``34·s·b·h / t`` with selective recomputation of attention, and
    ``2·s·b·h`` (the layer input only) with full recomputation. Under 1F1B pipelining the
    first stage keeps ``pp`` micro-batches in flight over ``L/pp`` layers.
    """
    scale = 2.0 if precision in ("fp32", "tf32") else 1.0  # the formulas count 16-bit values
    if model.architecture == "generic":
        per_sample = model.activation_bytes_per_sample or 0.0
        return per_sample * micro_batch * scale
    assert model.layers and model.hidden and model.heads and model.seq_len
    s, b, h, a = model.seq_len, micro_batch, model.hidden, model.heads
    if recompute == "full":
        per_layer = 2.0 * s * b * h
    elif recompute == "selective":
        per_layer = 34.0 * s * b * h / tp
    else:
        per_layer = s * b * h * (34.0 + 5.0 * a * s / h) / tp
    layers_per_stage = model.layers / pp
    in_flight = min(pp, max(1, microbatches_in_flight))
    return per_layer * layers_per_stage * in_flight * scale


def kv_cache_bytes_per_token(model: PlanModel, precision: str = "bf16") -> float:
    """Key and value cache per token: 2 · layers · kv_heads · head_dim · bytes.

    >>> opt13b = PlanModel(params=13e9, layers=40, hidden=5120, heads=40, seq_len=2048)
    >>> kv_cache_bytes_per_token(opt13b)  # 800 KB, as in the vLLM paper
    819200.0
    """
    assert model.layers and model.hidden and model.heads
    kv_heads = model.kv_heads or model.heads
    head_dim = model.hidden / model.heads
    value_bytes = BYTES_PER_VALUE[precision]
    return 2.0 * model.layers * kv_heads * head_dim * value_bytes
