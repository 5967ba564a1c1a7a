"""``kilowatt serve model.onnx``: an ONNX file answers like its TorchScript twin, through the
same engine, protocol and metrics."""

from __future__ import annotations

import warnings
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from serve_helpers import make_server, metric, running, small_mlp

from kilowatt.errors import ServeError
from kilowatt.serve.handler import load_handler
from kilowatt.spec import ModelSpec

SAMPLES = np.random.default_rng(2).standard_normal((3, 16)).astype(np.float32)


def _onnx_twin(module: torch.nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (torch.zeros(2, 16),), str(path), dynamo=False,
            input_names=["input"], output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        )  # fmt: skip
    return path


def _infer(client: httpx.Client, model: str, rows: np.ndarray) -> dict:
    tensor = {"name": "x", "shape": list(rows.shape), "datatype": "FP32",
              "data": rows.ravel().tolist()}  # fmt: skip
    response = client.post(f"/v2/models/{model}/infer", json={"id": "r", "inputs": [tensor]})
    assert response.status_code == 200, response.text
    return response.json()


def test_onnx_model_answers_oip_requests_as_its_torchscript_twin(
    mlp_file: Path, tmp_path: Path
) -> None:
    onnx_file = _onnx_twin(small_mlp(), tmp_path / "mlp.onnx")
    server = make_server(
        ModelSpec(name="ts", source=str(mlp_file)), ModelSpec(name="ox", source=str(onnx_file))
    )
    with running(server) as url, httpx.Client(base_url=url, timeout=30) as client:
        meta = client.get("/v2/models/ox").json()
        assert meta["inputs"][0]["shape"][-1] == 16  # read from the ONNX graph
        for rows in (SAMPLES[:1], SAMPLES):
            twin, onnx = _infer(client, "ts", rows), _infer(client, "ox", rows)
            assert onnx["model_name"] == "ox" and onnx["id"] == "r"
            for ours, theirs in zip(onnx["outputs"], twin["outputs"], strict=True):
                assert (ours["shape"], ours["datatype"]) == (theirs["shape"], theirs["datatype"])
                np.testing.assert_allclose(ours["data"], theirs["data"], rtol=1e-5, atol=1e-6)
    # The same request accounting as any model: every request counted under its name.
    assert (
        metric(server, "kilowatt_serve_requests_total", model="ox", version="1", status="200") == 2
    )


def test_a_broken_onnx_file_is_refused_with_its_name(tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf")
    handler = load_handler(ModelSpec(name="b", source=str(broken)))
    with pytest.raises(ServeError, match=r"broken\.onnx"):
        handler.load()


class _TwoInputs(torch.nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


def test_an_onnx_graph_with_several_inputs_is_refused_at_load(tmp_path: Path) -> None:
    path = tmp_path / "two.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_TwoInputs(), (torch.zeros(1, 4), torch.zeros(1, 4)), str(path),
                          dynamo=False, input_names=["a", "b"])  # fmt: skip
    handler = load_handler(ModelSpec(name="two", source=str(path)))
    with pytest.raises(ServeError, match=r"two\.onnx: the graph takes 2 inputs \(a, b\)"):
        handler.load()
