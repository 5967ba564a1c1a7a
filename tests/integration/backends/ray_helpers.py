"""Shared pieces of the Ray tests: the training spec and reading final weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kilowatt.spec import TrainSpec

HERE = Path(__file__).resolve().parent


def train_spec(name: str, checkpoint_url: Path, **changes: Any) -> TrainSpec:
    """A 10-step, 2-worker CPU job that checkpoints synchronously every 3 steps."""
    values: dict[str, Any] = {
        "name": name,
        "model": "backends_ray_jobs:make_model",
        "dataset": "backends_ray_jobs:make_dataset",
        "training_step": "backends_ray_jobs:training_step",
        "steps": 10,
        "batch_size": 8,
        "workers": 2,
        "device": "cpu",
        "log_every": 1,
        "progress": False,
        "checkpoint": {
            "url": str(checkpoint_url),
            "every": "3",
            "asynchronous": False,
            "keep_last": 5,
        },
        "backend": {"kind": "ray", "ray": {"cpus_per_worker": 1}},
    }
    values.update(changes)
    return TrainSpec.model_validate(values)


def final_weights(folder: Path, step: int = 10) -> list[float]:
    """The model weights of the newest checkpoint in ``folder`` (which must be ``step``),
    flattened in parameter order."""
    from kilowatt.train import CheckpointManager

    manager = CheckpointManager(str(folder), world_size=2)
    info = manager.latest()
    assert info is not None and info.step == step
    state, _ = manager.load(info)
    assert state is not None
    return [x for tensor in state["model"].values() for x in tensor.flatten().tolist()]


def local_weights(spec: TrainSpec, folder: Path) -> list[float]:
    """Train ``spec`` with local torch.distributed workers and return its final weights."""
    from kilowatt.train.entry import build_trainer

    checkpoint = {**spec.checkpoint.model_dump(), "url": str(folder)}
    build_trainer(spec, meter=None, checkpoint=checkpoint, resume="never").fit()
    return final_weights(folder)
