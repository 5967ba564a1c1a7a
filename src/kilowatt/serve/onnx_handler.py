"""ONNX models in serving: an ONNX Runtime session behind the same handler contract as
TorchScript, so ``kilowatt serve model.onnx`` gets the engine, batcher, protocol, metrics
and energy accounting unchanged.

>>> handler = OnnxHandler("model.onnx")  # doctest: +SKIP
>>> handler.load()  # doctest: +SKIP
>>> handler.predict(np.zeros((4, 64), dtype=np.float32)).shape  # doctest: +SKIP
(4, 10)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kilowatt.errors import ServeError

__all__ = ["OnnxHandler", "ort_session"]

# ONNX tensor element types -> Open Inference Protocol datatype names.
_ONNX_TYPES = {
    "tensor(float)": "FP32",
    "tensor(float16)": "FP16",
    "tensor(double)": "FP64",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(int8)": "INT8",
    "tensor(uint8)": "UINT8",
    "tensor(bool)": "BOOL",
}


class OnnxHandler:
    """Runs an ONNX file with ONNX Runtime (CPU) on NumPy batches.

    Args:
        path: the ``.onnx`` file.
        input_shape: shape of one sample; read from the model's first input when ``None``
            and every non-batch dimension is fixed.
        threads: intra-op threads; ``None`` uses what torch is set to in this process
            (``kilowatt serve`` sets it per worker), so both runtimes share one setting.
    """

    def __init__(
        self,
        path: str | Path,
        input_shape: tuple[int, ...] | None = None,
        threads: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.input_shape = input_shape
        self.input_dtype = "FP32"
        self._threads = threads
        self._session: Any = None
        self._input_name = ""

    def load(self) -> None:
        try:
            self._session = ort_session(self.path, self._threads or _torch_threads())
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ServeError(f"{self.path}: ONNX Runtime cannot load it ({exc})") from None
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            names = ", ".join(i.name for i in inputs)
            raise ServeError(
                f"{self.path}: the graph takes {len(inputs)} inputs ({names}); ONNX models are "
                "served with one input: export the model with a single input tensor"
            )
        first = inputs[0]
        if first.type not in _ONNX_TYPES:
            raise ServeError(
                f"{self.path}: input {first.name!r} has type {first.type}, which cannot be "
                f"served; use one of {', '.join(_ONNX_TYPES)}"
            )
        self._input_name = first.name
        self.input_dtype = _ONNX_TYPES[first.type]
        dims = first.shape[1:]
        if self.input_shape is None and all(isinstance(d, int) for d in dims):
            self.input_shape = tuple(dims)

    def predict(self, batch: np.ndarray) -> Any:
        if self._session is None:
            raise ServeError("predict() before load(): the model is not loaded yet")
        outputs = self._session.run(None, {self._input_name: batch})
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


def ort_session(path: str | Path, threads: int) -> Any:
    """An ONNX Runtime CPU session with every graph optimisation and ``threads`` intra-op
    threads (one inter-op thread: the batcher runs one batch at a time)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())
