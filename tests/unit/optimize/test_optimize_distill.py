"""Knowledge distillation: the student is smaller than the teacher, its agreement with the
teacher on the eval inputs is measured, and training on the teacher's soft targets makes
it agree far more than an untrained student of the same shape; without a training spec,
or with a teacher it cannot narrow, the transform is skipped with the reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from kilowatt.optimize import Distillation, FineTune, NotApplicable, TransformContext
from kilowatt.optimize.candidates import torchscript
from kilowatt.optimize.distill import (
    agreement,
    distillation,
    distillation_loss,
    narrow_student,
)
from kilowatt.optimize.measure import load_served

CLASSES = 5
INPUTS = np.random.default_rng(0).standard_normal((512, 16)).astype(np.float32)
EVAL = np.random.default_rng(1).standard_normal((256, 16)).astype(np.float32)


def teacher() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(16, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, CLASSES)
    ).eval()  # fmt: skip


def unlabelled() -> torch.utils.data.TensorDataset:
    """Inputs only: whatever the student learns comes from the teacher's soft targets."""
    return torch.utils.data.TensorDataset(torch.from_numpy(INPUTS))


def small_student() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, CLASSES))


def context(tmp_path: Path, module: nn.Module | None = None) -> TransformContext:
    return TransformContext(module or teacher(), EVAL[:8], EVAL[:64], tmp_path, eval_inputs=EVAL)


def soft_only_data(steps_batch: int = 64) -> FineTune:
    return FineTune(unlabelled, nn.functional.cross_entropy, None, batch_size=steps_batch)


def test_the_distilled_student_is_smaller_and_learns_the_teacher(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    spec = Distillation(width=0.25, temperature=2.0, steps=200)
    variant = distillation(spec)(ctx, soft_only_data())
    parameters = variant.parameters
    assert parameters["student_parameters"] < parameters["teacher_parameters"]
    # The recorded agreement is the saved student's, measured on every eval input.
    with torch.inference_mode():
        teacher_classes = ctx.module(torch.from_numpy(EVAL)).argmax(1).numpy()
    student_file, teacher_file = tmp_path / "student.pt", tmp_path / "teacher.pt"
    variant.save(student_file)
    served = np.asarray(load_served(student_file, 1, variant.serve_hints).predict(EVAL))
    distilled = float(np.mean(served.argmax(1) == teacher_classes))
    assert parameters["teacher_agreement"] == pytest.approx(distilled, abs=1e-4)
    # An untrained student of the same shape agrees about as often as chance; soft targets
    # alone (the data carry no labels) must take the distilled one far beyond it.
    untrained = narrow_student(ctx.module, torch.from_numpy(EVAL[:2]), 0.25)
    assert distilled > agreement(untrained, ctx.module, EVAL) + 0.3
    torchscript(ctx).save(teacher_file)
    assert student_file.stat().st_size < teacher_file.stat().st_size


def test_the_loss_is_zero_only_when_the_student_matches_the_teacher() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    assert float(distillation_loss(logits, logits, temperature=4.0)) == pytest.approx(0.0)
    other = logits.flip(1)
    assert float(distillation_loss(other, logits, temperature=4.0)) > 0.1
    # The hard-label term enters with the weight the soft term leaves.
    hard = torch.tensor(2.0)
    mixed = distillation_loss(logits, logits, 4.0, hard_loss=hard, soft_weight=0.75)
    assert float(mixed) == pytest.approx(0.5)


def test_a_named_student_is_used_and_recorded(tmp_path: Path) -> None:
    spec = Distillation(steps=5, student=f"{__name__}:small_student")
    variant = distillation(spec)(context(tmp_path), soft_only_data())
    assert variant.parameters["student"] == f"{__name__}:small_student"
    assert variant.parameters["student_parameters"] == 8 * 16 + 8 + CLASSES * 8 + CLASSES


def test_a_cnn_student_follows_the_shapes_through_flatten() -> None:
    cnn = nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16),
        nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 4 * 4, 64), nn.ReLU(),
        nn.Linear(64, 10),
    )  # fmt: skip
    student = narrow_student(cnn, torch.zeros(2, 64), 0.5)
    assert [m.out_channels for m in student if isinstance(m, nn.Conv2d)] == [8]
    assert [(m.in_features, m.out_features) for m in student if isinstance(m, nn.Linear)] == [
        (8 * 4 * 4, 32), (32, 10),
    ]  # fmt: skip
    assert student(torch.zeros(3, 64)).shape == (3, 10)


def test_without_a_training_spec_or_a_narrowable_teacher_it_is_skipped(tmp_path: Path) -> None:
    with pytest.raises(NotApplicable, match="training spec"):
        distillation()(context(tmp_path), None)
    lstm_teacher = nn.Sequential(nn.Linear(16, 8), nn.LSTM(8, 8))
    with pytest.raises(NotApplicable, match=r"LSTM.*--student"):
        distillation()(context(tmp_path, lstm_teacher), soft_only_data())
