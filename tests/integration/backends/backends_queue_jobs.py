"""Entry points of the queued training job in the local-queue tests.

``training_step`` kills its process in the middle of the first attempt (after two
checkpoints), the way a crash or an OOM kill would, so the retry must resume.
"""

from __future__ import annotations

import os

import torch
from torch import nn
from torch.nn import functional
from torch.utils.data import TensorDataset

CRASH_AT_CALL = 8
_calls = 0


def make_model() -> nn.Module:
    """A small MLP with dropout (exact resume depends on the RNG state too)."""
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 1))


def make_dataset() -> TensorDataset:
    """64 samples of a fixed linear function."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(64, 4, generator=generator)
    return TensorDataset(inputs, inputs.sum(dim=1, keepdim=True))


def training_step(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """MSE; the first queued attempt dies hard at call ``CRASH_AT_CALL``."""
    global _calls
    _calls += 1
    if os.environ.get("KILOWATT_JOB_ATTEMPT") == "1" and _calls == CRASH_AT_CALL:
        os._exit(3)
    inputs, targets = batch
    return functional.mse_loss(model(inputs), targets)
