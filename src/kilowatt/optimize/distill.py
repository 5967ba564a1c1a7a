"""Knowledge distillation into a smaller student: the student learns the teacher's soft
targets (KL divergence between temperature-softened outputs) plus the training spec's own
loss on the hard labels, for a bounded number of steps on the training spec's data.

The student is either derived from the teacher (an ``nn.Sequential`` whose hidden Linear and
Conv layers are narrowed to ``width`` of their outputs; the output layer keeps its size) or
built by a user's ``module:function``. Without a training spec the transform does not apply.

    >>> import torch
    >>> from torch import nn
    >>> teacher = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    >>> narrow_student(teacher, torch.zeros(2, 8), width=0.5)  # doctest: +NORMALIZE_WHITESPACE
    Sequential(
      (0): Linear(in_features=8, out_features=16, bias=True)
      (1): ReLU()
      (2): Linear(in_features=16, out_features=3, bias=True)
    )
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from kilowatt.optimize.candidates import NotApplicable, TransformContext, Variant, torchscript
from kilowatt.optimize.prune import FineTune, epochs

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["Distillation", "distillation", "distillation_loss", "narrow_student"]


def _width_layers() -> tuple[type, ...]:
    from torch import nn

    return (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class Distillation:
    """How to distil.

    Attributes:
        width: share of each hidden layer's outputs the derived student keeps.
        temperature: softens both output distributions; higher passes more of the
            teacher's ranking of the wrong classes.
        soft_weight: weight of the soft-target term (the hard-label term gets the rest).
        steps: optimizer steps (the bound on training time).
        student: ``module:function`` returning the student module, instead of deriving it.
    """

    width: float = 0.5
    temperature: float = 4.0
    soft_weight: float = 0.7
    steps: int = 1000
    student: str | None = None

    def __post_init__(self) -> None:
        if not 0 < self.width < 1:
            raise ValueError(f"width {self.width} must lie strictly between 0 and 1")
        if self.temperature <= 0 or not 0 <= self.soft_weight <= 1 or self.steps < 1:
            raise ValueError(
                "temperature must be > 0, soft_weight within [0, 1] and steps >= 1 "
                f"(got {self.temperature}, {self.soft_weight}, {self.steps})"
            )


def _flat_layers(module: nn.Module) -> list[nn.Module]:
    from torch import nn

    if not isinstance(module, nn.Sequential):
        return [module]
    return [leaf for child in module for leaf in _flat_layers(child)]


def narrow_student(teacher: nn.Module, example: torch.Tensor, width: float) -> nn.Module:
    """A freshly initialised copy of ``teacher`` with each hidden Linear/Conv layer keeping
    ``width`` of its outputs; shapes are followed by running ``example`` through.

    Raises:
        NotApplicable: the teacher is not an ``nn.Sequential``, or holds a layer with
            weights this function cannot resize (the message names it).
    """
    import torch
    from torch import nn

    if not isinstance(teacher, nn.Sequential):
        raise NotApplicable(
            f"a student is derived only from an nn.Sequential (this is "
            f"{type(teacher).__name__}); name one with --student module:function"
        )
    layers = _flat_layers(teacher)
    last = max(i for i, layer in enumerate(layers) if isinstance(layer, _width_layers()))
    torch.manual_seed(0)
    student, x = [], example
    for index, layer in enumerate(layers):
        new = _resized(layer, x, width if index < last else 1.0)
        with torch.no_grad():
            x = new.eval()(x)
        student.append(new)
    return nn.Sequential(*student).eval()


def _resized(layer: nn.Module, x: torch.Tensor, width: float) -> nn.Module:
    """``layer`` rebuilt for inputs shaped like ``x`` and ``width`` of its outputs."""
    from torch import nn

    if isinstance(layer, nn.Linear):
        return nn.Linear(x.shape[-1], _narrowed(layer.out_features, width), layer.bias is not None)
    if isinstance(layer, _width_layers()):
        if layer.groups != 1:
            raise NotApplicable(f"cannot narrow grouped {type(layer).__name__}; name a --student")
        return type(layer)(
            x.shape[1], _narrowed(layer.out_channels, width), layer.kernel_size,
            stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
            bias=layer.bias is not None, padding_mode=layer.padding_mode,
        )  # fmt: skip
    if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
        return type(layer)(x.shape[1], layer.eps, layer.momentum, layer.affine)
    if any(True for _ in layer.parameters()):
        raise NotApplicable(
            f"cannot narrow a {type(layer).__name__} layer; name a student with "
            "--student module:function"
        )
    return copy.deepcopy(layer)


def _narrowed(size: int, width: float) -> int:
    return max(1, round(size * width))


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    hard_loss: torch.Tensor | None = None,
    soft_weight: float = 1.0,
) -> torch.Tensor:
    """``soft_weight`` x T^2 x KL(teacher || student) at temperature T, plus
    ``1 - soft_weight`` x the hard-label loss when there is one (T^2 keeps the soft term's
    gradients on the scale of the hard term's)."""
    from torch import nn

    soft = nn.functional.kl_div(
        nn.functional.log_softmax(student_logits / temperature, dim=-1),
        nn.functional.log_softmax(teacher_logits / temperature, dim=-1),
        log_target=True, reduction="batchmean",
    ) * temperature**2  # fmt: skip
    if hard_loss is None:
        return soft
    return soft_weight * soft + (1.0 - soft_weight) * hard_loss


def train_student(
    student: nn.Module, teacher: nn.Module, data: FineTune, spec: Distillation
) -> nn.Module:
    """Train ``student`` in place on the teacher's soft targets (and the data's hard labels
    through the spec's loss, when batches carry them) for ``spec.steps`` steps."""
    import torch

    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(data.dataset(), batch_size=data.batch_size, shuffle=True)
    optimizer = (
        data.optimizer(student)
        if data.optimizer is not None
        else torch.optim.Adam(student.parameters(), lr=1e-3)
    )
    student.train()  # the teacher stays as given: eval mode (an exported one cannot switch)
    for batch in epochs(loader, spec.steps):
        pair = isinstance(batch, (list, tuple))
        inputs = batch[0] if pair else batch
        with torch.no_grad():
            teacher_logits = teacher(inputs)
        logits = student(inputs)
        hard = data.loss(logits, batch[1]) if pair and len(batch) > 1 else None
        loss = distillation_loss(logits, teacher_logits, spec.temperature, hard, spec.soft_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return student.eval()


def agreement(student: nn.Module, teacher: nn.Module, inputs: np.ndarray) -> float:
    """Share of ``inputs`` on which student and teacher pick the same class."""
    import torch

    with torch.inference_mode():
        batch = torch.from_numpy(inputs)
        return float((student(batch).argmax(-1) == teacher(batch).argmax(-1)).float().mean())


def _parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _build_student(ctx: TransformContext, spec: Distillation) -> tuple[nn.Module, str]:
    import torch

    if spec.student is not None:
        from kilowatt.serve.handler import _import_object

        return _import_object(spec.student, "student")().eval(), spec.student
    example = torch.from_numpy(ctx.example)
    return narrow_student(ctx.module, example, spec.width), f"teacher narrowed to {spec.width:g}"


def distillation(
    spec: Distillation = Distillation(),
) -> Callable[[TransformContext, FineTune | None], Variant]:
    """The transform: build the student, distil for ``spec.steps`` steps, save it as
    TorchScript; the parameters record the student's size and its agreement with the
    teacher on the eval inputs."""

    def transform(ctx: TransformContext, data: FineTune | None) -> Variant:
        if data is None:
            raise NotApplicable("distillation needs a training spec (--train) for its data")
        student, described = _build_student(ctx, spec)
        teacher_params, student_params = _parameter_count(ctx.module), _parameter_count(student)
        if student_params >= teacher_params:
            raise NotApplicable(
                f"the student has {student_params:,} parameters, the teacher "
                f"{teacher_params:,}: not smaller"
            )
        train_student(student, ctx.module, data, spec)
        inputs = ctx.eval_inputs if ctx.eval_inputs is not None else ctx.calibration
        scripted = torchscript(ctx.with_module(student))
        parameters = {
            "student": described, "teacher_parameters": teacher_params,
            "student_parameters": student_params, "temperature": spec.temperature,
            "soft_weight": spec.soft_weight, "steps": spec.steps,
            "batch_size": data.batch_size,
            "teacher_agreement": round(agreement(student, ctx.module, inputs), 4),
        }  # fmt: skip
        return Variant(
            f"distilled-{spec.width:g}" if spec.student is None else "distilled",
            f"knowledge distillation (KL at T={spec.temperature:g}, {spec.steps} steps)",
            parameters, "torch", ".pt", scripted.save,
        )  # fmt: skip

    return transform
