"""Pruning variants: magnitude (unstructured) and structured (whole output channels), each
followed by a short fine-tune on the training spec's data so the kept weights recover what
the removed ones carried.

The fine-tune reuses the training spec's entry points (dataset, loss, optimizer); without a
training spec the pruning transforms do not apply.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from kilowatt.optimize.candidates import (
    NotApplicable,
    TransformContext,
    Variant,
    quiet_torch_warnings,
    torchscript,
)

__all__ = ["FineTune", "magnitude_pruning", "structured_pruning"]


@dataclass(frozen=True)
class FineTune:
    """How to fine-tune a pruned copy: the spec's entry points and a step count.

    Attributes:
        dataset: returns a map-style dataset of (input, target) pairs.
        loss: ``loss(outputs, targets) -> tensor``.
        optimizer: ``optimizer(module) -> torch.optim.Optimizer`` (SGD when None).
        steps: optimizer steps after pruning.
        batch_size: samples per step.
    """

    dataset: Callable[[], Any]
    loss: Callable[[Any, Any], Any]
    optimizer: Callable[[Any], Any] | None
    steps: int = 100
    batch_size: int = 64

    def run(self, module: Any) -> None:
        """Train ``module`` in place for ``steps`` steps (seeded, reproducible)."""
        import torch

        torch.manual_seed(0)
        loader = torch.utils.data.DataLoader(
            self.dataset(), batch_size=self.batch_size, shuffle=True, drop_last=False
        )
        if self.optimizer is not None:
            optimizer = self.optimizer(module)
        else:
            optimizer = torch.optim.SGD(module.parameters(), lr=0.01)
        module.train()
        for inputs, targets in epochs(loader, self.steps):
            optimizer.zero_grad(set_to_none=True)
            self.loss(module(inputs), targets).backward()
            optimizer.step()
        module.eval()


def epochs(loader: Iterable[Any], steps: int) -> Iterator[Any]:
    """``steps`` batches from ``loader``, starting a new epoch (a new shuffle) whenever
    one ends."""
    done = 0
    while True:
        started = done
        for batch in loader:
            if done == steps:
                return
            yield batch
            done += 1
        if done == started:
            raise ValueError("the training data set is empty")


def _prunable(module: Any) -> list[tuple[Any, str]]:
    from torch import nn

    return [
        (m, "weight") for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))
    ]


def _prune(
    ctx: TransformContext,
    finetune: FineTune | None,
    name: str,
    apply: Callable[[Any, str], None],
    parameters: dict[str, Any],
) -> Variant:
    from torch.nn.utils import prune

    if finetune is None:
        raise NotApplicable("pruning needs a training spec (--train) for its fine-tune")
    module = copy.deepcopy(ctx.module)
    targets = _prunable(module)
    # The output layer decides the classes: pruning it costs accuracy for no speed.
    targets = targets[:-1]
    if not targets:
        raise NotApplicable("no Linear or Conv layer besides the output layer to prune")
    for layer, attribute in targets:
        apply(layer, attribute)
    finetune.run(module)  # the masks stay applied while the kept weights train
    for layer, attribute in targets:
        prune.remove(layer, attribute)
    zeros = sum(int((getattr(m, a) == 0).sum()) for m, a in targets)
    sparsity = zeros / sum(getattr(m, a).numel() for m, a in targets)
    with quiet_torch_warnings():
        scripted = torchscript(ctx.with_module(module))
    return Variant(
        name, f"torch.nn.utils.prune+fine-tune({finetune.steps} steps)",
        {**parameters, "layers": len(targets), "sparsity": round(sparsity, 4),
         "fine_tune_steps": finetune.steps},
        "torch", ".pt", scripted.save,
    )  # fmt: skip


def magnitude_pruning(
    amount: float = 0.5,
) -> Callable[[TransformContext, FineTune | None], Variant]:
    """Zero the ``amount`` share of weights with the smallest magnitude in each layer."""

    def transform(ctx: TransformContext, finetune: FineTune | None) -> Variant:
        from torch.nn.utils import prune

        return _prune(
            ctx, finetune, f"pruned-l1-{amount:g}",
            lambda layer, attr: prune.l1_unstructured(layer, attr, amount=amount),
            {"method": "l1_unstructured", "amount": amount},
        )  # fmt: skip

    return transform


def structured_pruning(
    amount: float = 0.25,
) -> Callable[[TransformContext, FineTune | None], Variant]:
    """Zero the ``amount`` share of output channels (rows) with the smallest L2 norm."""

    def transform(ctx: TransformContext, finetune: FineTune | None) -> Variant:
        from torch.nn.utils import prune

        return _prune(
            ctx, finetune, f"pruned-channels-{amount:g}",
            lambda layer, attr: prune.ln_structured(layer, attr, amount=amount, n=2, dim=0),
            {"method": "ln_structured", "n": 2, "dim": 0, "amount": amount},
        )  # fmt: skip

    return transform
