"""Training time: compute at an achieved fraction of peak, communication, pipeline bubble,
checkpoints, and preemptions on spot capacity.

The checkpoint interval on spot capacity is ``kilowatt.spec.train.young_daly_interval_s``,
the rule the trainer's ``every: auto`` follows too, so a plan and its run agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kilowatt.spec.train import young_daly_interval_s

__all__ = [
    "GEMM_HALF_WIDTH",
    "RECOMPUTE_FACTOR",
    "StepTime",
    "checkpoint_overhead_s",
    "exposed_comm_s",
    "gemm_efficiency",
    "pipeline_bubble_fraction",
    "time_with_preemptions_s",
    "virtual_stages",
]

# Extra arithmetic per step from recomputation: full recompute repeats the forward pass
# (+1/3 of fwd+bwd); selective recompute redoes only attention scores (~3%, Korthikanti
# et al. 2022, table 4).
RECOMPUTE_FACTOR = {"none": 1.0, "selective": 1.03, "full": 4.0 / 3.0}


# Matrix units reach their sustained rate only on wide matrices: a GEMM whose narrowest
# side is ``w`` runs at ``w / (w + GEMM_HALF_WIDTH)`` of the rate of a very wide one (tiles
# under-fill the streaming multiprocessors and the fixed per-kernel costs weigh more).
# Fitted with the MFU defaults on published runs (``kilowatt.plan.fit``).
GEMM_HALF_WIDTH = 512.0


def gemm_efficiency(width: float, half_width: float = GEMM_HALF_WIDTH) -> float:
    """Share of the wide-matrix rate at narrowest side ``width``.

    >>> gemm_efficiency(256.0, 256.0), round(gemm_efficiency(4096.0, 256.0), 3)
    (0.5, 0.941)
    """
    if math.isinf(width):
        return 1.0  # no shape to judge by (generic models)
    return width / (width + half_width)


@dataclass(frozen=True)
class StepTime:
    """Seconds of one optimizer step, by cause."""

    compute_s: float
    bubble_s: float
    tensor_comm_s: float
    """Tensor-parallel all-reduces and pipeline sends left exposed."""
    data_comm_s: float
    """Data-parallel communication left exposed after overlap with the backward pass."""

    @property
    def total_s(self) -> float:
        return self.compute_s + self.bubble_s + self.tensor_comm_s + self.data_comm_s

    @property
    def busy_fraction(self) -> float:
        """Share of the step the accelerators spend on arithmetic."""
        return self.compute_s / self.total_s if self.total_s > 0 else 0.0


def pipeline_bubble_fraction(pp: int, microbatches: float, virtual_stages: int = 1) -> float:
    """Idle share added by a 1F1B pipeline: ``(pp-1)/(m·v)`` of the compute time, with
    ``v`` model chunks per stage in the interleaved schedule (Narayanan et al. 2021).

    >>> pipeline_bubble_fraction(16, 16), pipeline_bubble_fraction(16, 16, virtual_stages=3)
    (0.9375, 0.3125)
    """
    return (pp - 1) / (microbatches * virtual_stages) if pp > 1 else 0.0


def virtual_stages(layers: int, pp: int, microbatches: float) -> int:
    """Model chunks per pipeline stage in Megatron-LM's interleaved schedule: at scale the
    micro-batch count per pipeline is small, so one layer per chunk (the deepest
    interleave, as Llama 3 405B ran); the schedule needs at least ``pp`` micro-batches.

    >>> virtual_stages(126, 16, 16), virtual_stages(126, 16, 8), virtual_stages(32, 1, 4)
    (7, 1, 1)
    """
    if pp <= 1 or microbatches < pp:
        return 1
    return max(1, layers // pp)


def exposed_comm_s(comm_s: float, compute_s: float, overlap: float) -> float:
    """Communication not hidden: ``overlap`` of it can hide behind the backward pass
    (two thirds of the step's compute), never more than that pass lasts."""
    hidden = min(overlap * comm_s, compute_s * 2.0 / 3.0)
    return comm_s - hidden


def checkpoint_overhead_s(train_s: float, checkpoint_s: float, interval_s: float) -> float:
    """Time spent writing checkpoints every ``interval_s`` during ``train_s`` of work."""
    return math.floor(train_s / interval_s) * checkpoint_s


def time_with_preemptions_s(
    train_s: float, checkpoint_s: float, preemptions_per_s: float, restart_s: float
) -> tuple[float, float]:
    """Wall time of ``train_s`` of work on preemptible capacity, and the checkpoint interval.

    Each interval ``τ`` costs a checkpoint ``C``; each preemption loses on average ``τ/2``
    of work plus ``restart_s``. Returns ``(wall_s, τ)``.
    """
    mtbf_s = 1.0 / preemptions_per_s if preemptions_per_s > 0 else math.inf
    tau = young_daly_interval_s(checkpoint_s, mtbf_s)
    if math.isinf(tau):
        return train_s, tau
    checkpoint_share = checkpoint_s / tau if tau > 0 else 0.0
    overhead = checkpoint_share + preemptions_per_s * (tau / 2.0 + restart_s)
    if overhead >= 1.0:
        return math.inf, tau  # preempted faster than it can make progress
    # Overheads stretch the wall time, and the stretched time sees more preemptions.
    return train_s / (1.0 - overhead), tau
