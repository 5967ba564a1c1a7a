"""Acceptance: two data-parallel workers match one worker at the same global batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from examples.train import tiny
from kilowatt.train import Trainer


def _fit(folder: Path, workers: int, batch_size: int) -> dict[str, torch.Tensor]:
    trainer = Trainer(
        tiny.make_model_without_dropout,
        tiny.make_optimizer,
        train_data=tiny.make_dataset(),
        loss_fn=tiny.loss_fn,
        scheduler=tiny.make_scheduler,
        meter=None,
        workers=workers,
        batch_size=batch_size,
        steps=24,  # one and a half epochs of 16 global batches of 16
        progress=False,
        checkpoint={"url": str(folder), "every": "10"},
    )
    result = trainer.fit()
    assert result.steps == 24
    assert result.samples == 24 * 16  # global samples, whatever the worker count
    return torch.load(folder / "step-000000024" / "state.pt", weights_only=False)["model"]


@pytest.mark.slow
def test_two_workers_match_one_worker_at_the_same_global_batch(tmp_path: Path) -> None:
    one = _fit(tmp_path / "one", workers=1, batch_size=16)
    two = _fit(tmp_path / "two", workers=2, batch_size=8)
    for key in one:
        # Same samples per step, gradients averaged by all-reduce: equal up to float order.
        assert torch.allclose(one[key], two[key], atol=1e-5), key
    # each rank wrote its own RNG and data position
    assert sorted(p.name for p in (tmp_path / "two" / "step-000000024").glob("rank-*.pt")) == [
        "rank-0.pt",
        "rank-1.pt",
    ]
