"""Each transform's outputs match fp32 within a stated tolerance on a fixed batch; a model
that a transform cannot handle is reported as skipped, never a crash; an eval that does not
fit the model is refused before any work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from kilowatt.errors import SpecError
from kilowatt.optimize import (
    TRANSFORMS,
    Effort,
    EvalSet,
    FineTune,
    NotApplicable,
    OptimizeOptions,
    TransformContext,
    optimize,
)
from kilowatt.optimize.candidates import quiet_torch_warnings
from kilowatt.optimize.measure import load_served
from kilowatt.optimize.prune import magnitude_pruning

BATCH = np.random.default_rng(0).random((16, 64), dtype=np.float32)
# Exact rewrites of the graph must agree to float rounding; int8 quantization to a few
# percent of the output range (8-bit steps over the activations' range, two layers deep).
EXACT_ATOL = 1e-4
INT8_SHARE_OF_RANGE = 0.05


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(256, 16), nn.ReLU(), nn.Linear(16, 10),
    ).eval()  # fmt: skip


@pytest.fixture
def ctx(tmp_path: Path) -> TransformContext:
    return TransformContext(small_cnn(), BATCH[:8], BATCH, tmp_path)


@pytest.mark.parametrize(
    ("name", "atol_share"),
    [
        ("fp32-eager", 0.0),
        ("torchscript", 0.0),
        ("torch-export", 0.0),
        ("onnx", 0.0),
        ("int8-dynamic", INT8_SHARE_OF_RANGE),
        ("int8-static", INT8_SHARE_OF_RANGE),
        ("torchao-int8-dynamic", INT8_SHARE_OF_RANGE),
        ("torchao-int8-weight-only", INT8_SHARE_OF_RANGE),
        ("onnx-int8-dynamic", INT8_SHARE_OF_RANGE),
        ("onnx-int8-static", INT8_SHARE_OF_RANGE),
    ],
)
def test_transform_matches_fp32_on_a_fixed_batch(
    ctx: TransformContext, name: str, atol_share: float
) -> None:
    with torch.inference_mode():
        expected = ctx.module(torch.from_numpy(BATCH)).numpy()
    variant = TRANSFORMS[name](ctx)
    atol = max(EXACT_ATOL, atol_share * float(np.ptp(expected)))
    path = ctx.workdir / f"{variant.name}{variant.suffix}"
    variant.save(path)
    # The saved file, loaded as kilowatt serve loads it, is what gets measured and served.
    served = load_served(path, 1, variant.serve_hints).predict(BATCH)
    np.testing.assert_allclose(np.asarray(served), expected, atol=atol, rtol=0)


def test_magnitude_pruning_zeroes_half_of_each_hidden_layer(ctx: TransformContext) -> None:
    data = torch.utils.data.TensorDataset(torch.from_numpy(BATCH), torch.zeros(16, dtype=int))
    finetune = FineTune(lambda: data, nn.functional.cross_entropy, None, steps=2, batch_size=8)
    variant = magnitude_pruning(0.5)(ctx, finetune)
    # Every hidden layer lost half its weights (the output layer is kept whole).
    assert variant.parameters["sparsity"] >= 0.5 and variant.parameters["layers"] == 2
    with torch.inference_mode():
        dense = ctx.module(torch.from_numpy(BATCH)).numpy()
    path = ctx.workdir / f"{variant.name}{variant.suffix}"
    variant.save(path)
    pruned = np.asarray(load_served(path, 1, variant.serve_hints).predict(BATCH))
    assert not np.allclose(pruned, dense, atol=1e-3)
    assert variant.parameters["fine_tune_steps"] == 2


def test_pruning_without_a_training_spec_is_not_applicable(ctx: TransformContext) -> None:
    with pytest.raises(NotApplicable, match="training spec"):
        magnitude_pruning(0.5)(ctx, None)


class _Unexportable(nn.Module):
    """A model no exporter handles: a convolution then a special function ONNX lacks."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.bessel_j0(self.conv(x.unsqueeze(1)).flatten(1))


def test_unsupported_layers_are_reported_as_skipped(tmp_path: Path) -> None:
    module = _Unexportable().eval()
    eval_set = EvalSet(BATCH[:, :5], np.zeros((16, 10), np.float32), metric=lambda o, t: 0.0)
    options = OptimizeOptions(
        threads=(1,), effort=Effort.quick(),
        transforms=("int8-dynamic", "onnx", "onnx-int8-static", "half", "pruned-l1",
                    "torchao-int8-dynamic", "distilled"),
    )  # fmt: skip
    report = optimize(module, eval_set, tmp_path, options)
    rows = {row.name: row for row in report.candidates}
    assert rows["fp32-eager"].status == "measured"
    assert "no nn.Linear or nn.LSTM" in rows["int8-dynamic"].reason
    assert rows["onnx"].status == rows["onnx-int8-static"].status == "skipped"
    assert "bessel" in rows["onnx"].reason.lower()
    assert "CUDA" in rows["half"].reason
    assert "training spec" in rows["pruned-l1"].reason
    assert "training spec" in rows["distilled"].reason
    assert "no nn.Linear" in rows["torchao-int8-dynamic"].reason
    assert report.chosen is rows["fp32-eager"]


def test_an_eval_that_does_not_fit_the_outputs_is_refused_before_any_work(
    tmp_path: Path,
) -> None:
    bad = EvalSet(BATCH, np.full(16, 12))  # class 12 of a 10-class model
    workdir = tmp_path / "work"
    with pytest.raises(SpecError, match=r"class indices below 10"):
        optimize(small_cnn(), bad, workdir, OptimizeOptions(threads=(1,)))
    assert not workdir.exists()


def test_the_cost_objective_without_a_price_is_refused_before_any_work(tmp_path: Path) -> None:
    evaluation = EvalSet(BATCH, np.zeros(16, np.int64))
    workdir = tmp_path / "work"
    with pytest.raises(SpecError, match=r"cost objective needs a price.*usd_per_s"):
        optimize(small_cnn(), evaluation, workdir, OptimizeOptions(objective="cost"))
    assert not workdir.exists()


def test_an_exported_program_gets_its_int8_variant(tmp_path: Path) -> None:
    # A registered .pt2 loads as a graph module the fast ONNX exporter cannot trace; the
    # torch.export-based one must write a single file the quantizer can read.
    module = small_cnn()
    example = torch.from_numpy(BATCH[:2])
    dims = ({0: torch.export.Dim("batch", min=1, max=64)},)
    graph = torch.export.export(module, (example,), dynamic_shapes=dims).module()
    ctx = TransformContext(graph, BATCH[:8], BATCH, tmp_path)
    variant = TRANSFORMS["onnx-int8-static"](ctx)
    with torch.inference_mode():
        expected = module(torch.from_numpy(BATCH)).numpy()
    atol = INT8_SHARE_OF_RANGE * float(np.ptp(expected))
    path = tmp_path / "onnx-int8-static.onnx"
    variant.save(path)
    served = load_served(path, 1, variant.serve_hints).predict(BATCH)
    np.testing.assert_allclose(np.asarray(served), expected, atol=atol, rtol=0)


def test_torch_static_int8_saves_int8_kernels(ctx: TransformContext) -> None:
    variant = TRANSFORMS["int8-static"](ctx)
    path = ctx.workdir / "int8-static.pt"
    variant.save(path)
    with quiet_torch_warnings():  # torch.jit.load is deprecated upstream; serve still reads it
        graph = str(torch.jit.load(str(path)).inlined_graph)
    assert "quantized::conv2d" in graph and "quantized::linear" in graph
    assert variant.parameters["calibration_samples"] == len(BATCH)


@pytest.mark.parametrize("name", ["torchao-int8-dynamic", "torchao-int8-weight-only"])
def test_torchao_variants_save_int8_linear_weights(ctx: TransformContext, name: str) -> None:
    variant = TRANSFORMS[name](ctx)
    path = ctx.workdir / f"{name}.pt2"
    variant.save(path)
    weights = torch.export.load(str(path)).state_dict
    int8 = {k for k, w in weights.items() if getattr(getattr(w, "qdata", None), "dtype", None)
            == torch.int8}  # fmt: skip
    assert int8 == {"4.weight", "6.weight"}  # both Linear layers, not the Conv


def test_torch_static_int8_skips_a_model_fx_cannot_trace(tmp_path: Path) -> None:
    ctx = TransformContext(_Untraceable().eval(), BATCH[:8], BATCH, tmp_path)
    with pytest.raises(NotApplicable, match=r"torch\.fx cannot trace"):
        TRANSFORMS["int8-static"](ctx)


class _Untraceable(nn.Module):
    """Control flow on a tensor's value: symbolic tracing cannot follow it."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.linear(x)
        return -self.linear(x)
