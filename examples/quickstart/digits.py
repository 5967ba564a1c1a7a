"""The quickstart workload: a small CNN that reads handwritten digits.

The data is scikit-learn's copy of the UCI handwritten digits (1,797 images of 8x8 pixels,
16 grey levels), which ships inside the installed package, so nothing is downloaded.
``kilowatt quickstart`` trains it through ``examples/quickstart/digits.yaml``:

    kilowatt train examples/quickstart/digits.yaml   # the training step on its own

``kilowatt quickstart`` first stores the digits as the versioned data set
``sklearn-digits:<scikit-learn version>`` (``dataset_source``) and trains by streaming its
training rows through ``kilowatt.data.Loader``.

A sample is the 64 pixels of one image as floats in [0, 1], row by row; the model answers
with 10 logits, one per digit.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional
from torch.utils.data import TensorDataset

PIXELS = 64
CLASSES = 10
#: Share of the images held out for evaluation (a fixed, seeded split).
EVAL_FRACTION = 0.2
SPLIT_SEED = 0
#: Multiply-adds of one forward pass: conv 1->16 and 16->32 (3x3, on 8x8), then
#: 512->64->10. Two FLOPs per multiply-add; training is forward + backward = 3x forward.
_FORWARD_MACS = 64 * 16 * 9 + 64 * 32 * 16 * 9 + 512 * 64 + 64 * 10
FORWARD_FLOPS_PER_SAMPLE = 2 * _FORWARD_MACS
FLOPS_PER_SAMPLE = 3 * FORWARD_FLOPS_PER_SAMPLE


def make_model() -> nn.Module:
    """Two 3x3 convolutions, a 2x2 max-pool and two linear layers (38,282 parameters)."""
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, 16, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64),
        nn.ReLU(),
        nn.Linear(64, CLASSES),
    )


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """AdamW: converges in a few hundred steps on this data without tuning."""
    return torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)


#: The versioned data set the quickstart trains from (``kilowatt.data``).
DATASET_NAME = "sklearn-digits"
#: Its columns: the inputs, the targets, and which side of the seeded hold-out a row is on.
PIXELS_COLUMN, LABEL_COLUMN, SPLIT_COLUMN = "pixels", "label", "split"


@cache
def _digits() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every image as 64 floats in [0, 1], its label, and whether it is held out."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.data / 16.0).astype(np.float32)  # 16 grey levels -> [0, 1]
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    held_out = np.zeros(len(labels), dtype=bool)
    held_out[order[: int(len(labels) * EVAL_FRACTION)]] = True
    return images, labels, held_out


@cache
def _split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Training and held-out images and labels, each in the seeded permutation's order."""
    images, labels, held_out = _digits()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    test, train = order[held_out[order]], order[~held_out[order]]
    return images[train], labels[train], images[test], labels[test]


def dataset_source() -> tuple[str, str, dict[str, np.ndarray]]:
    """The shipped digits as a data set: name, version (scikit-learn's, whose copy it is)
    and columns. The same scikit-learn gives the same content, so the same version."""
    import sklearn

    images, labels, held_out = _digits()
    columns = {
        PIXELS_COLUMN: images,
        LABEL_COLUMN: labels,
        SPLIT_COLUMN: np.where(held_out, "test", "train"),
    }
    return DATASET_NAME, sklearn.__version__, columns


def is_training_sample(sample: dict[str, Any]) -> bool:
    """The loader's filter: rows outside the held-out evaluation set."""
    return bool(sample[SPLIT_COLUMN] == "train")


def make_dataset() -> TensorDataset:
    """The training images (80% of the set) with their labels."""
    images, labels, _, _ = _split()
    return TensorDataset(torch.from_numpy(images), torch.from_numpy(labels))


def make_eval_dataset() -> TensorDataset:
    """The held-out images (20% of the set) with their labels."""
    _, _, images, labels = _split()
    return TensorDataset(torch.from_numpy(images), torch.from_numpy(labels))


def loss_fn(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the logits against the digit labels."""
    return functional.cross_entropy(outputs, targets)


def accuracy(model: nn.Module, dataset: TensorDataset) -> float:
    """Fraction of ``dataset`` the model labels correctly."""
    images, labels = dataset.tensors
    model.eval()
    with torch.inference_mode():
        predicted = model(images).argmax(dim=1)
    return float((predicted == labels).float().mean())


def example_request() -> tuple[list[float], int]:
    """One held-out image as a request body's inputs, and the digit it shows."""
    _, _, images, labels = _split()
    return [float(v) for v in images[0]], int(labels[0])


def export(model: nn.Module, path: str) -> str:
    """Save ``model`` as a ``torch.export`` archive (``.pt2``) taking any batch size."""
    model.eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    example = torch.zeros(2, PIXELS)
    program = torch.export.export(model, (example,), dynamic_shapes={"input": {0: batch}})
    torch.export.save(program, path)
    return path
