"""A tiny regression job: every entry point ``kilowatt train`` can name.

    kilowatt train examples/train/tiny.yaml

Entry points (``examples.train.tiny:<name>``): ``make_model``,
``make_model_without_dropout``, ``make_optimizer``,
``make_dataset``, ``make_eval_dataset``, ``loss_fn``, ``training_step``, ``make_scheduler``,
``make_dataloader``.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn
from torch.nn import functional
from torch.utils.data import TensorDataset

IN_FEATURES = 8
HIDDEN = 32
#: Training FLOPs per sample: 2 FLOPs per multiply-add, x3 for forward + backward.
FLOPS_PER_SAMPLE = 3 * 2 * (IN_FEATURES * HIDDEN + HIDDEN)


def make_model() -> nn.Module:
    """Two linear layers with dropout (dropout makes exact resume depend on RNG state)."""
    return nn.Sequential(
        nn.Linear(IN_FEATURES, HIDDEN), nn.ReLU(), nn.Dropout(0.1), nn.Linear(HIDDEN, 1)
    )


def make_model_without_dropout() -> nn.Module:
    """The same network without dropout: its result depends only on the data it sees."""
    return nn.Sequential(nn.Linear(IN_FEATURES, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 1))


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """SGD with momentum (optimizer state must survive a resume)."""
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


def make_scheduler(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """Halve the learning rate every 50 steps."""
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=50, gamma=0.5)


def _regression(samples: int, seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(samples, IN_FEATURES, generator=generator)
    weights = torch.linspace(-1.0, 1.0, IN_FEATURES).unsqueeze(1)
    noise = 0.05 * torch.randn(samples, 1, generator=generator)
    return TensorDataset(inputs, inputs @ weights + noise)


def make_dataset() -> TensorDataset:
    """256 noisy samples of a fixed linear function."""
    return _regression(256, seed=0)


def make_eval_dataset() -> TensorDataset:
    """64 held-out samples of the same function."""
    return _regression(64, seed=1)


def loss_fn(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared error."""
    return functional.mse_loss(outputs, targets)


def training_step(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The same loss, written as a full training step."""
    inputs, targets = batch
    return functional.mse_loss(model(inputs), targets)


def make_dataloader(batch_size: int, rank: int, world_size: int) -> Iterator[tuple]:
    """Batches of this rank's shard, in a fixed order (a hand-made loader)."""
    data = make_dataset()
    indices = list(range(rank, len(data), world_size))
    for start in range(0, len(indices) - batch_size + 1, batch_size):
        yield data[indices[start : start + batch_size]]
