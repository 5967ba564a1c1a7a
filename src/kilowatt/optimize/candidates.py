"""Candidate variants of a model: each transform builds one that saves as a servable file.

A transform takes the fp32 module and the context (an example batch, calibration samples, a
work folder) and returns a :class:`Variant`, or raises :class:`NotApplicable` with the
reason it does not apply (no Linear layers to quantize, no accelerator with bf16...). Any
other exception from a transform is also turned into a skip by the optimizer: a model that
cannot be exported or quantized is reported, never a crash.

Every variant can be saved as a file ``kilowatt serve`` reads (TorchScript ``.pt``,
``torch.export`` ``.pt2`` or ONNX ``.onnx``).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kilowatt.errors import KilowattError

__all__ = [
    "BASELINE",
    "TRANSFORMS",
    "NotApplicable",
    "TransformContext",
    "Variant",
    "quiet_torch_warnings",
]


#: The unchanged fp32 module's variant: what every other variant is compared with.
BASELINE = "fp32-eager"


class NotApplicable(KilowattError):
    """A transform does not apply to this model; the message says why."""


@dataclass
class Variant:
    """One way to run the model.

    Attributes:
        name: short label in tables (``onnx-int8-static``).
        transform: what was done, in the terms of the library that did it.
        parameters: the transform's settings (recorded on the registered version).
        runtime: ``torch`` or ``onnxruntime``.
        suffix: the file suffix of the saved form.
        save: writes the servable file.
        serve_hints: ``ModelSpec`` fields ``kilowatt serve`` needs to read the file
            (``format``, ``factory``); empty when the file is recognised by itself.
    """

    name: str
    transform: str
    parameters: dict[str, Any]
    runtime: str
    suffix: str
    save: Callable[[Path], None]
    serve_hints: dict[str, str] = field(default_factory=dict)


@dataclass
class TransformContext:
    """What transforms share: the fp32 module, an example batch, calibration samples,
    a folder for files and whether an accelerator is present (``eval_inputs``: the whole
    eval set's inputs, when a transform reports how far it strays from the model)."""

    module: Any
    example: np.ndarray
    calibration: np.ndarray
    workdir: Path
    device: str = "cpu"
    factory: str | None = None
    eval_inputs: np.ndarray | None = None
    _onnx_path: Path | None = None

    def with_module(self, module: Any) -> TransformContext:
        """The same context around another module (a pruned copy, a student)."""
        return dataclasses.replace(self, module=module, factory=None, _onnx_path=None)

    def onnx_file(self) -> Path:
        """The fp32 module exported to ONNX once, shared by the ONNX Runtime variants."""
        if self._onnx_path is None:
            self._onnx_path = _export_onnx(self.module, self.example, self.workdir / "fp32.onnx")
        return self._onnx_path


@contextlib.contextmanager
def quiet_torch_warnings() -> Iterator[None]:
    """Silence the notices torch and the exporters print while a variant is built
    (deprecations of APIs a variant chose deliberately, tracer remarks): a transform either
    works, and is measured, or raises, and its reason goes in the table."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _jit_save(module: Any, path: Path) -> None:
    import torch

    with quiet_torch_warnings():
        torch.jit.save(module, str(path))


def _example_tensor(ctx: TransformContext) -> Any:
    import torch

    return torch.from_numpy(ctx.example)


def fp32_eager(ctx: TransformContext) -> Variant:
    """The module as given: the reference every other variant is compared with.

    With a factory it is saved as a state dict and served eager; without one it can only be
    saved as a TorchScript trace (and the transform says so)."""
    import torch

    if ctx.factory is not None:
        return Variant(
            BASELINE, "none", {"saved_as": "state_dict"}, "torch", ".pt",
            lambda path: torch.save(ctx.module.state_dict(), path),
            serve_hints={"format": "state_dict", "factory": ctx.factory},
        )  # fmt: skip

    def save(path: Path) -> None:
        with quiet_torch_warnings():
            _jit_save(torch.jit.trace(ctx.module, _example_tensor(ctx)), path)

    return Variant(
        BASELINE, "none", {"saved_as": "torchscript-trace (no factory)"}, "torch", ".pt", save,
    )  # fmt: skip


def torchscript(ctx: TransformContext) -> Variant:
    """``torch.jit.trace`` then ``torch.jit.freeze`` (constants folded, eval-only)."""
    import torch

    with quiet_torch_warnings():
        traced = torch.jit.freeze(torch.jit.trace(ctx.module, _example_tensor(ctx)).eval())
    return Variant(
        "torchscript", "torch.jit.trace+freeze", {}, "torch", ".pt",
        lambda path: _jit_save(traced, path),
    )  # fmt: skip


def torch_export(ctx: TransformContext) -> Variant:
    """``torch.export`` with a dynamic batch dimension."""
    import torch

    batch = torch.export.Dim("batch", min=1, max=65536)
    example = torch.from_numpy(np.concatenate([ctx.example[:1]] * 2))
    with quiet_torch_warnings():
        program = torch.export.export(ctx.module, (example,), dynamic_shapes=({0: batch},))
    return Variant(
        "torch-export", "torch.export.export", {"dynamic": "batch"}, "torch", ".pt2",
        lambda path: torch.export.save(program, str(path)),
    )  # fmt: skip


def _quantizable_types(module: Any) -> set[type]:
    from torch import nn

    wanted = (nn.Linear, nn.LSTM)
    return {type(m) for m in module.modules() if isinstance(m, wanted)}


def int8_dynamic(ctx: TransformContext) -> Variant:
    """Dynamic int8 quantization of Linear/LSTM layers (weights int8, activations quantized
    on the fly), ``torch.ao.quantization.quantize_dynamic``."""
    import torch

    types = _quantizable_types(ctx.module)
    if not types:
        raise NotApplicable("no nn.Linear or nn.LSTM modules to quantize")
    with quiet_torch_warnings():
        from torch.ao.quantization import quantize_dynamic

        quantized = quantize_dynamic(ctx.module, types, dtype=torch.qint8)
        traced = torch.jit.freeze(torch.jit.trace(quantized, _example_tensor(ctx)).eval())
    layers = sorted(t.__name__ for t in types)
    return Variant(
        "int8-dynamic", "torch.ao.quantization.quantize_dynamic",
        {"layers": layers, "dtype": "qint8"}, "torch", ".pt",
        lambda path: _jit_save(traced, path),
    )  # fmt: skip


def _static_quantizable(module: Any) -> bool:
    from torch import nn

    wanted = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    return any(isinstance(m, wanted) for m in module.modules())


def int8_static(ctx: TransformContext) -> Variant:
    """Static int8 quantization in torch (FX graph mode): observers calibrated on the
    calibration samples fix every activation's scale, so Linear and Conv layers run as
    int8 kernels of the quantized engine (x86/fbgemm on x86 CPUs) with no per-batch range
    search. FX graph mode, not PT2E: PT2E's int8 graphs only become int8 kernels through
    ``torch.compile``, which a saved servable file does not carry."""
    import torch

    if not _static_quantizable(ctx.module):
        raise NotApplicable("no nn.Linear or nn.Conv layers to quantize")
    engine = torch.backends.quantized.engine
    if engine not in ("x86", "fbgemm", "qnnpack", "onednn"):
        raise NotApplicable(f"this torch build has no int8 CPU engine (engine {engine!r})")
    with quiet_torch_warnings():
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        example = _example_tensor(ctx)
        try:
            prepared = prepare_fx(
                copy.deepcopy(ctx.module).eval(), get_default_qconfig_mapping(engine), (example,)
            )
        except Exception as exc:
            line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise NotApplicable(f"torch.fx cannot trace the model: {line}") from None
        with torch.inference_mode():
            for start in range(0, len(ctx.calibration), 32):
                prepared(torch.from_numpy(ctx.calibration[start : start + 32]))
        quantized = convert_fx(prepared)
        traced = torch.jit.freeze(torch.jit.trace(quantized, example).eval())
    parameters = {
        "engine": engine, "qconfig": f"get_default_qconfig_mapping({engine!r})",
        "calibration_samples": len(ctx.calibration),
    }  # fmt: skip
    return Variant(
        "int8-static", "torch.ao.quantization.quantize_fx.prepare_fx+convert_fx", parameters,
        "torch", ".pt", lambda path: _jit_save(traced, path),
    )  # fmt: skip


def _torchao() -> Any:
    """torchao's ``quantization`` module, or NotApplicable saying how to get it."""
    import logging

    # On a CPU-only torch build torchao logs each CUDA kernel library it cannot load, and
    # torch a notice about how torchao registers an enum: neither concerns a CPU variant.
    logs = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [log.level for log in logs]
    for log in logs:
        log.setLevel(logging.ERROR)
    try:
        import torchao.quantization as quantization
    except ImportError:
        raise NotApplicable("torchao is not installed (pip install torchao)") from None
    finally:
        for log, level in zip(logs, levels, strict=True):
            log.setLevel(level)
    return quantization


def _torchao_variant(ctx: TransformContext, name: str, config_name: str) -> Variant:
    """Quantize the Linear layers of a copy with torchao's ``quantize_`` and save it as a
    ``torch.export`` archive (torchao's int8 tensors do not survive ``torch.jit.trace``)."""
    from torch import nn

    quantization = _torchao()
    if not any(isinstance(m, nn.Linear) for m in ctx.module.modules()):
        raise NotApplicable("no nn.Linear modules to quantize (torchao quantizes Linear only)")
    module = copy.deepcopy(ctx.module).eval()
    with quiet_torch_warnings():
        quantization.quantize_(module, getattr(quantization, config_name)())
    variant = torch_export(ctx.with_module(module))
    import torchao

    return Variant(
        name, f"torchao.quantization.quantize_({config_name})",
        {"layers": ["Linear"], "torchao": torchao.__version__, "saved_as": "torch.export"},
        "torch", ".pt2", variant.save,
    )  # fmt: skip


def torchao_int8_dynamic(ctx: TransformContext) -> Variant:
    """torchao int8 dynamic quantization: int8 weights, activations quantized per token."""
    return _torchao_variant(ctx, "torchao-int8-dynamic", "Int8DynamicActivationInt8WeightConfig")


def torchao_int8_weight_only(ctx: TransformContext) -> Variant:
    """torchao int8 weight-only quantization: int8 weights, fp32 activations."""
    return _torchao_variant(ctx, "torchao-int8-weight-only", "Int8WeightOnlyConfig")


def half_precision(ctx: TransformContext) -> Variant:
    """bf16 weights and activations, only on an accelerator that computes in it."""
    if ctx.device == "cpu":
        raise NotApplicable("bf16/fp16 need a CUDA accelerator; this machine has none")
    import torch

    if not torch.cuda.is_available():
        raise NotApplicable("torch sees no CUDA device")
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    module = ctx.module.to("cuda", dtype=dtype)

    def save(path: Path) -> None:
        with quiet_torch_warnings():
            example = _example_tensor(ctx).to("cuda", dtype=dtype)
            _jit_save(torch.jit.trace(module, example), path)

    return Variant(
        str(dtype).removeprefix("torch."), f"module.to({dtype})", {"device": "cuda"},
        "torch", ".pt", save,
    )  # fmt: skip


def _export_onnx(module: Any, example: np.ndarray, path: Path) -> Path:
    """Export with a dynamic batch axis; the TorchScript-based exporter first (it takes
    a fraction of a second), the torch.export-based one when it cannot trace the module."""
    import torch

    tensor = torch.from_numpy(example)
    names = {"input_names": ["input"], "output_names": ["output"]}
    with quiet_torch_warnings():
        try:
            torch.onnx.export(
                module, (tensor,), str(path), dynamo=False,
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, **names,
            )  # fmt: skip
        except Exception as first:
            batch = torch.export.Dim("batch")
            try:
                torch.onnx.export(
                    module, (tensor,), str(path), dynamo=True,
                    dynamic_shapes=({0: batch},), external_data=False, **names,
                )  # fmt: skip
            except Exception:
                line = (str(first).strip().splitlines() or [type(first).__name__])[0]
                raise NotApplicable(f"neither ONNX exporter handles this model: {line}") from None
    return path


def _copier(source: Path) -> Callable[[Path], None]:
    import shutil

    return lambda path: shutil.copyfile(source, path)


def onnx_fp32(ctx: TransformContext) -> Variant:
    """ONNX export run by ONNX Runtime with all graph optimisations."""
    path = ctx.onnx_file()
    return Variant(
        "onnx", "torch.onnx.export+onnxruntime", {"graph_optimization_level": "ORT_ENABLE_ALL"},
        "onnxruntime", ".onnx", _copier(path),
    )  # fmt: skip


def onnx_int8_dynamic(ctx: TransformContext) -> Variant:
    """ONNX Runtime dynamic quantization (int8 weights, activations quantized per batch)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source = _preprocessed(ctx)
    target = ctx.workdir / "int8-dynamic.onnx"
    with quiet_torch_warnings():
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
    return Variant(
        "onnx-int8-dynamic", "onnxruntime.quantization.quantize_dynamic",
        {"weight_type": "QInt8"}, "onnxruntime", ".onnx", _copier(target),
    )  # fmt: skip


def onnx_int8_static(ctx: TransformContext) -> Variant:
    """ONNX Runtime static quantization (QDQ, per-channel int8 weights, uint8 activations)
    calibrated on the first eval samples, as ONNX Runtime's quantization guide does it."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    samples = ctx.calibration

    class _Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._rows = iter(range(len(samples)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            index = next(self._rows, None)
            return None if index is None else {"input": samples[index : index + 1]}

    source = _preprocessed(ctx)
    target = ctx.workdir / "int8-static.onnx"
    with quiet_torch_warnings():
        quantize_static(
            str(source), str(target), _Reader(), quant_format=QuantFormat.QDQ,
            per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
        )  # fmt: skip
    parameters = {
        "format": "QDQ", "per_channel": True, "weight_type": "QInt8",
        "activation_type": "QUInt8", "calibration_samples": len(samples),
        "calibration_method": "MinMax",
    }  # fmt: skip
    return Variant(
        "onnx-int8-static", "onnxruntime.quantization.quantize_static", parameters,
        "onnxruntime", ".onnx", _copier(target),
    )  # fmt: skip


def _preprocessed(ctx: TransformContext) -> Path:
    """ONNX Runtime's recommended pre-processing (shape inference + graph optimisation)
    before quantization; symbolic shape inference is skipped for graphs it cannot read."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    target = ctx.workdir / "fp32-pre.onnx"
    if not target.exists():
        quant_pre_process(str(ctx.onnx_file()), str(target), skip_symbolic_shape=True)
    return target


#: Every transform the optimizer tries, in table order.
TRANSFORMS: dict[str, Callable[[TransformContext], Variant]] = {
    BASELINE: fp32_eager,
    "torchscript": torchscript,
    "torch-export": torch_export,
    "int8-dynamic": int8_dynamic,
    "int8-static": int8_static,
    "torchao-int8-dynamic": torchao_int8_dynamic,
    "torchao-int8-weight-only": torchao_int8_weight_only,
    "half": half_precision,
    "onnx": onnx_fp32,
    "onnx-int8-dynamic": onnx_int8_dynamic,
    "onnx-int8-static": onnx_int8_static,
}
