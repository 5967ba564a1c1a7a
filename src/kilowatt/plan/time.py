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
    "RECOMPUTE_FACTOR",
    "StepTime",
    "checkpoint_overhead_s",
    "exposed_comm_s",
    "pipeline_bubble_fraction",
    "time_with_preemptions_s",
]

# Extra arithmetic per step from recomputation: full recompute repeats the forward pass
# (+1/3 of fwd+bwd); selective recompute redoes only attention scores (~3%, Korthikanti
# et al. 2022, table 4).
RECOMPUTE_FACTOR = {"none": 1.0, "selective": 1.03, "full": 4.0 / 3.0}


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


def pipeline_bubble_fraction(pp: int, microbatches: float) -> float:
    """Idle share added by a 1F1B pipeline: ``(pp-1)/m`` of the compute time."""
    return (pp - 1) / microbatches if pp > 1 else 0.0


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
