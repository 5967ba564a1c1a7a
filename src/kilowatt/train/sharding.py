"""Fully sharded data parallel (FSDP): wrapping, and full (unsharded) state for checkpoints.

Checkpoints hold the full model and optimizer state gathered to rank 0 on the host, so a
sharded run resumes exactly like a DDP one. Gathering is a collective: every rank calls
``full_state``. FSDP here needs CUDA devices (NCCL); CPU runs use DDP.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kilowatt.errors import SpecError

__all__ = ["full_state", "load_full_state", "wrap_fsdp"]


def wrap_fsdp(model: nn.Module, device: torch.device) -> nn.Module:
    """Shard ``model`` over the process group (build the optimizer afterwards)."""
    if device.type != "cuda":
        raise SpecError("fsdp: true needs CUDA devices; on CPU set fsdp: false (DDP is used)")
    from torch.distributed.fsdp import FullyShardedDataParallel

    return FullyShardedDataParallel(model, device_id=device)


def _full_state_context(model: nn.Module, rank0_only: bool) -> Any:
    from torch.distributed.fsdp import (
        FullOptimStateDictConfig,
        FullStateDictConfig,
        FullyShardedDataParallel,
        StateDictType,
    )

    return FullyShardedDataParallel.state_dict_type(
        model,
        StateDictType.FULL_STATE_DICT,
        FullStateDictConfig(offload_to_cpu=True, rank0_only=rank0_only),
        FullOptimStateDictConfig(offload_to_cpu=True, rank0_only=rank0_only),
    )


def full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Model and optimizer state gathered on rank 0's host (empty on other ranks)."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    with _full_state_context(model, rank0_only=True):
        return model.state_dict(), FullyShardedDataParallel.optim_state_dict(model, optimizer)


def load_full_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    model_state: dict[str, Any],
    optimizer_state: dict[str, Any],
) -> None:
    """Load full state (read by every rank) into a sharded model and its optimizer."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    with _full_state_context(model, rank0_only=False):
        model.load_state_dict(model_state)
        sharded = FullyShardedDataParallel.optim_state_dict_to_load(
            model, optimizer, optimizer_state
        )
    optimizer.load_state_dict(sharded)
