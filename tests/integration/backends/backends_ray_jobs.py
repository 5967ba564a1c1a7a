"""Entry points of the Ray training tests: a tiny model, and a step that kills its worker.

``training_step`` SIGKILLs the Ray worker of rank 1 once (the first time it reaches call
``KILL_AT_CALL``), after two checkpoints, the way a lost node would; the marker file in
``KILOWATT_HOME`` keeps the restarted worker alive.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional
from torch.utils.data import TensorDataset

KILL_AT_CALL = 5
_calls = 0


def make_model() -> nn.Module:
    """A small MLP with dropout (exact resume depends on RNG state too)."""
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.1), nn.Linear(8, 1))


def make_dataset() -> TensorDataset:
    """64 samples of a fixed linear function."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(64, 4, generator=generator)
    return TensorDataset(inputs, inputs.sum(dim=1, keepdim=True))


def training_step(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """MSE."""
    inputs, targets = batch
    return functional.mse_loss(model(inputs), targets)


def killing_training_step(
    model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """MSE; rank 1 kills its own worker process once, at call ``KILL_AT_CALL``."""
    global _calls
    _calls += 1
    marker = Path(os.environ["KILOWATT_HOME"]) / "killed-once"
    if dist.get_rank() == 1 and _calls == KILL_AT_CALL and not marker.exists():
        marker.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return training_step(model, batch)
