"""Model handlers: load a model from a file or a class, and run one batch on it.

A handler is anything with ``load()`` and ``predict(batch)``; ``batch`` is a NumPy array
whose first axis is the batch, and the result has one row per input row. The loaders here
turn TorchScript files, ``torch.export`` archives, state dicts with a factory, and user
handler classes into handlers:

>>> from kilowatt.spec import ModelSpec
>>> handler = load_handler(ModelSpec(name="mlp", source="mlp.pt"))  # doctest: +SKIP
>>> handler.predict(np.zeros((4, 256), dtype=np.float32)).shape  # doctest: +SKIP
(4, 10)
"""

from __future__ import annotations

import contextlib
import importlib
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from kilowatt.errors import ServeError, SpecError
from kilowatt.spec.serve import InputSpec, ModelSpec

__all__ = [
    "DTYPES",
    "ModelHandler",
    "TorchHandler",
    "load_handler",
    "numpy_dtype",
]

# Open Inference Protocol datatype names -> NumPy dtypes.
DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
_OIP_NAMES = {dtype: name for name, dtype in DTYPES.items()}


def numpy_dtype(name: str) -> np.dtype[Any]:
    """The NumPy dtype of an Open Inference Protocol datatype name (``FP32`` -> float32)."""
    try:
        return DTYPES[name.upper()]
    except KeyError:
        raise SpecError(
            f"unknown tensor datatype {name!r}; use one of {', '.join(DTYPES)}"
        ) from None


def oip_dtype(dtype: np.dtype[Any]) -> str:
    """The Open Inference Protocol name of a NumPy dtype (float32 -> ``FP32``)."""
    try:
        return _OIP_NAMES[np.dtype(dtype)]
    except KeyError:
        raise ServeError(
            f"the model returned dtype {dtype}, which the protocol cannot carry"
        ) from None


@runtime_checkable
class ModelHandler(Protocol):
    """What the engine needs from a model: load it once, then run batches.

    Optional attributes a handler may set: ``input_shape`` (shape of one sample, for
    warm-up and request checks) and ``input_dtype`` (an OIP datatype name); a model with
    several inputs sets ``inputs`` instead (objects with ``name``, ``shape`` of one sample
    and ``datatype``), and its ``predict`` gets a dict of arrays by input name.
    """

    def load(self) -> None:
        """Load weights and prepare to run; called once, before warm-up."""

    def predict(self, batch: np.ndarray) -> Any:
        """Run one batch (first axis = samples); return one output row per input row."""


class TorchHandler:
    """Runs a ``torch.nn.Module`` (or TorchScript / exported module) on NumPy batches.

    Args:
        build: returns the module; called by ``load()``.
        input_shape: shape of one sample; inferred from the module when ``None``.
        input_dtype: OIP datatype of the input.
        inputs: named inputs of a module taking several tensors, in ``forward`` order.
    """

    def __init__(
        self,
        build: Callable[[], Any],
        input_shape: tuple[int, ...] | None = None,
        input_dtype: str = "FP32",
        inputs: tuple[InputSpec, ...] | None = None,
    ) -> None:
        self._build = build
        self.input_shape = input_shape
        self.input_dtype = input_dtype
        self.inputs = inputs
        self._module: Any = None

    def load(self) -> None:
        import torch

        module = self._build()
        if isinstance(module, torch.nn.Module):
            # An exported program fixed its train/eval mode at export and refuses eval().
            with contextlib.suppress(NotImplementedError):
                module.eval()
        self._module = module
        if self.input_shape is None and self.inputs is None:
            self.input_shape = _infer_input_shape(module)

    def predict(self, batch: np.ndarray | dict[str, np.ndarray]) -> Any:
        import torch

        if self._module is None:
            raise ServeError("predict() before load(): the model is not loaded yet")
        if isinstance(batch, dict) and self.inputs is not None:
            # Several inputs: passed positionally, in the order the spec declares them.
            args = [torch.from_numpy(batch[spec.name]) for spec in self.inputs]
        else:
            args = [torch.from_numpy(batch)]  # type: ignore[arg-type]
        with torch.inference_mode():
            out = self._module(*args)
        return _to_numpy(out)


def _to_numpy(out: Any) -> Any:
    import torch

    if isinstance(out, torch.Tensor):
        return out.detach().cpu().numpy()
    if isinstance(out, (tuple, list)):
        return tuple(_to_numpy(item) for item in out)
    if isinstance(out, dict):
        return {key: _to_numpy(value) for key, value in out.items()}
    return np.asarray(out)


def _infer_input_shape(module: Any) -> tuple[int, ...] | None:
    """Shape of one sample when the module says so: an exported program's placeholder,
    or the fan-in of a first linear layer. ``None`` when it cannot be told."""
    example = getattr(module, "_kilowatt_example_shape", None)
    if example is not None:
        return tuple(example)
    for _, param in getattr(module, "named_parameters", lambda: iter(()))():
        if param.dim() == 2:  # a Linear weight is [out_features, in_features]
            return (int(param.shape[1]),)
        return None  # the first weight is not a linear layer: the shape is not knowable
    return None


def _import_object(ref: str, what: str) -> Any:
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise SpecError(f"{what} {ref!r} must look like 'package.module:name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SpecError(f"{what} {ref!r}: cannot import {module_name!r} ({exc})") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise SpecError(f"{what} {ref!r}: module {module_name!r} has no {attr!r}") from None


def _detect_format(path: Path) -> str:
    if path.suffix == ".pt2":
        return "export"
    if path.suffix == ".onnx":
        return "onnx"
    if not zipfile.is_zipfile(path):
        raise ServeError(
            f"{path}: not a TorchScript or torch.export archive; for a state dict pass "
            "format 'state_dict' with factory 'module:function'"
        )
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    if any("/code/" in name or name.endswith("constants.pkl") for name in names):
        return "torchscript"
    if any("serialized_exported_program" in name or "/models/" in name for name in names):
        return "export"
    raise ServeError(
        f"{path}: a torch archive that is neither TorchScript nor torch.export (a state dict?); "
        "pass format 'state_dict' with factory 'module:function'"
    )


def _load_export(path: Path) -> Any:
    import torch

    program = torch.export.load(str(path))
    module = program.module()
    user_inputs = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user_inputs and "val" in node.meta:
            module._kilowatt_example_shape = tuple(int(d) for d in node.meta["val"].shape[1:])
            break
    return module


def _load_state_dict(path: Path, factory_ref: str) -> Any:
    import torch

    factory = _import_object(factory_ref, "factory")
    module = factory()
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise ServeError(
            f"{path}: the state dict does not fit the module built by {factory_ref!r}: {exc}"
        ) from None
    return module


def load_handler(spec: ModelSpec) -> ModelHandler:
    """Build the (not yet loaded) handler of one model version from its spec.

    Raises:
        SpecError: the source file or class does not exist.
        ServeError: the file is not a model kilowatt can read.
    """
    fmt = spec.format
    if fmt == "auto" and ":" in spec.source and not Path(spec.source).exists():
        fmt = "handler"
    if fmt == "handler":
        cls = _import_object(spec.source, "handler")
        handler = cls()
        if not (callable(getattr(handler, "load", None)) and callable(handler.predict)):
            raise SpecError(f"handler {spec.source!r} needs load() and predict(batch) methods")
        if spec.input_shape is not None:
            handler.input_shape = spec.input_shape
        if spec.inputs is not None:
            handler.inputs = spec.inputs
        return handler
    path = Path(spec.source)
    if not path.is_file():
        raise SpecError(f"model file {spec.source!r} does not exist; check the path")
    if fmt == "auto":
        fmt = _detect_format(path)
    if fmt == "onnx":
        from kilowatt.serve.onnx_handler import OnnxHandler

        return OnnxHandler(path, spec.input_shape)
    build = _builder(fmt, path, spec)
    return TorchHandler(build, spec.input_shape, spec.input_dtype, spec.inputs)


def _builder(fmt: str, path: Path, spec: ModelSpec) -> Callable[[], Any]:
    if fmt == "torchscript":

        def build() -> Any:
            import torch

            try:
                # TorchScript is deprecated upstream but still how many models ship; a
                # user serving one has chosen it, so the warning is noise here.
                with warnings.catch_warnings():
                    warnings.filterwarnings(
                        "ignore",
                        message="`torch.jit.load` is deprecated",
                        category=DeprecationWarning,
                    )
                    return torch.jit.load(str(path), map_location="cpu")
            except RuntimeError as exc:
                raise ServeError(f"{path}: not a TorchScript file ({exc})") from None

        return build
    if fmt == "export":
        return lambda: _load_export(path)
    assert fmt == "state_dict" and spec.factory is not None  # checked by ModelSpec
    factory = spec.factory
    return lambda: _load_state_dict(path, factory)
