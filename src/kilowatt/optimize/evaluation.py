"""The evaluation set a variant is judged on, and the metric that judges it.

``--eval`` names where it comes from:

- ``package.module:function`` — a function returning an :class:`EvalSet`, a pair
  ``(inputs, targets)`` of arrays, or a ``torch.utils.data.TensorDataset``;
- ``path/to/file.npz`` — arrays ``inputs`` and ``targets``;
- another scheme a data source registers with :func:`register_eval_source` (for instance a
  registered data set version), so new kinds of evaluation data plug in without changing
  the optimizer.

>>> import numpy as np
>>> ev = EvalSet(np.zeros((4, 3), np.float32), np.array([0, 1, 2, 0]))
>>> ev.score(np.eye(3, dtype=np.float32)[[0, 1, 2, 1]])
0.75
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kilowatt.errors import SpecError

__all__ = [
    "EvalSet",
    "accuracy",
    "check_eval_fits",
    "load_eval",
    "register_eval_source",
]

Metric = Callable[[np.ndarray, np.ndarray], float]


def accuracy(outputs: np.ndarray, targets: np.ndarray) -> float:
    """Share of rows whose largest output is the target class."""
    return float(np.mean(np.argmax(outputs, axis=1) == targets))


@dataclass(frozen=True)
class EvalSet:
    """Inputs, expected targets and the metric comparing a model's outputs with them.

    Attributes:
        inputs: the samples, first axis = samples.
        targets: class indices (one per sample) or arrays shaped like the outputs.
        metric: ``metric(outputs, targets) -> float``; accuracy by default.
        metric_name: how tables and the gate name the metric.
        higher_is_better: False for losses and errors (the budget then bounds a rise).
    """

    inputs: np.ndarray
    targets: np.ndarray
    metric: Metric = accuracy
    metric_name: str = "accuracy"
    higher_is_better: bool = True

    def score(self, outputs: np.ndarray) -> float:
        """The metric of ``outputs`` (one row per input) against the targets."""
        return float(self.metric(np.asarray(outputs), self.targets))

    def calibration_batch(self, samples: int = 128) -> np.ndarray:
        """The first ``samples`` inputs: what static quantization calibrates on."""
        return self.inputs[:samples]


#: Resolvers by prefix (``"dataset:"`` -> a function of the rest of the reference).
_SOURCES: dict[str, Callable[[str], EvalSet]] = {}


def register_eval_source(prefix: str, resolve: Callable[[str], EvalSet]) -> None:
    """Let ``--eval PREFIX...`` resolve through ``resolve(rest_of_reference)``."""
    _SOURCES[prefix] = resolve


def load_eval(ref: str) -> EvalSet:
    """Resolve ``--eval``: a registered source prefix, an ``.npz`` file or ``module:function``.

    Raises:
        SpecError: the reference cannot be resolved or yields something that is not an
            evaluation set (the message says what was expected).
    """
    for prefix, resolve in _SOURCES.items():
        if ref.startswith(prefix):
            return resolve(ref[len(prefix) :])
    if ref.endswith(".npz"):
        return _from_npz(Path(ref))
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise SpecError(
            f"eval {ref!r} is neither 'package.module:function' nor an .npz file with "
            "arrays 'inputs' and 'targets'"
        )
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise SpecError(f"eval {ref!r}: cannot load it ({exc}); check the module path") from None
    return as_eval_set(function(), ref)


def _from_npz(path: Path) -> EvalSet:
    if not path.is_file():
        raise SpecError(f"eval file {str(path)!r} does not exist; check the path")
    with np.load(path) as arrays:
        missing = {"inputs", "targets"} - set(arrays.files)
        if missing:
            raise SpecError(
                f"eval file {str(path)!r} lacks {', '.join(sorted(missing))}; save it with "
                "np.savez(path, inputs=..., targets=...)"
            )
        return EvalSet(np.asarray(arrays["inputs"]), np.asarray(arrays["targets"]))


def as_eval_set(value: Any, ref: str) -> EvalSet:
    """Turn what an eval function returned into an :class:`EvalSet`."""
    if isinstance(value, EvalSet):
        return value
    tensors = getattr(value, "tensors", None)  # a TensorDataset
    if tensors is not None and len(tensors) == 2:
        value = tuple(t.detach().cpu().numpy() for t in tensors)
    if isinstance(value, tuple) and len(value) == 2:
        inputs, targets = (np.asarray(v) for v in value)
        if len(inputs) != len(targets) or len(inputs) == 0:
            raise SpecError(
                f"eval {ref!r} returned {len(inputs)} inputs and {len(targets)} targets; "
                "return as many of each, at least one"
            )
        return EvalSet(inputs, targets)
    raise SpecError(
        f"eval {ref!r} returned {type(value).__name__}; return an EvalSet, a pair "
        "(inputs, targets) of arrays or a TensorDataset of two tensors"
    )


def check_eval_fits(eval_set: EvalSet, outputs: np.ndarray) -> None:
    """Refuse an eval whose targets cannot be compared with the model's outputs.

    ``outputs`` is the model's answer to the first eval sample (batch of one).

    Raises:
        SpecError: naming both shapes.
    """
    targets = eval_set.targets
    shape = tuple(outputs.shape[1:])
    if targets.shape[1:] == shape:
        return
    is_index = targets.ndim == 1 and np.issubdtype(targets.dtype, np.integer)
    if is_index and len(shape) == 1 and targets.min() >= 0 and targets.max() < shape[0]:
        return
    raise SpecError(
        f"the eval targets (shape {list(targets.shape)}, max {targets.max()!r}) do not match "
        f"the model's outputs (shape per sample {list(shape)}); give class indices below "
        f"{shape[0] if shape else 1} or targets shaped like the outputs"
    )
