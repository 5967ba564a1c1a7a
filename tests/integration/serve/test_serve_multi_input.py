"""A model with two named inputs and two named outputs over REST JSON and binary REST
(gRPC: test_serve_grpc.py), with the same shape and dtype checks on every route."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
from serve_helpers import TWO_INPUTS, TwoInputs, make_server, running, save_torchscript

from kilowatt.spec import ModelSpec

X = np.array([[1, 2, 3, 4], [-1, 0, 5, 2]], dtype=np.float32)
SCALE = np.array([[2], [3]], dtype=np.int64)
TOTAL = (X.sum(axis=1, keepdims=True) * SCALE).astype(np.float32)  # [[20], [18]]
PEAK = X.max(axis=1, keepdims=True)


@pytest.fixture
def two_inputs_url(tmp_path: Path):
    model = save_torchscript(TwoInputs(), tmp_path / "two.pt")
    server = make_server(ModelSpec(name="two", source=str(model), inputs=TWO_INPUTS))
    with running(server) as url:
        yield url


def test_predict_takes_inputs_by_name(two_inputs_url: str) -> None:
    body = {"inputs": {"x": X.tolist(), "scale": SCALE.tolist()}}
    reply = httpx.post(f"{two_inputs_url}/predict", json=body, timeout=30)
    assert reply.status_code == 200
    assert reply.json()["outputs"] == {"total": TOTAL.tolist(), "peak": PEAK.tolist()}
    one = {"inputs": {"x": X[0].tolist(), "scale": SCALE[0].tolist()}}
    assert httpx.post(f"{two_inputs_url}/predict", json=one, timeout=30).json()["outputs"] == {
        "total": TOTAL[0].tolist(),
        "peak": PEAK[0].tolist(),
    }


def test_oip_json_takes_both_tensors_and_returns_the_outputs_asked_for(
    two_inputs_url: str,
) -> None:
    body = {
        "inputs": [
            {"name": "scale", "shape": [2, 1], "datatype": "INT64", "data": SCALE.ravel().tolist()},
            {"name": "x", "shape": [2, 4], "datatype": "FP32", "data": X.ravel().tolist()},
        ],
        "outputs": [{"name": "total"}],
    }
    reply = httpx.post(f"{two_inputs_url}/v2/models/two/infer", json=body, timeout=30).json()
    assert reply["outputs"] == [
        {"name": "total", "datatype": "FP32", "shape": [2, 1], "data": TOTAL.ravel().tolist()}
    ]
    meta = httpx.get(f"{two_inputs_url}/v2/models/two", timeout=30).json()
    assert meta["inputs"] == [
        {"name": "x", "datatype": "FP32", "shape": [-1, 4]},
        {"name": "scale", "datatype": "INT64", "shape": [-1, 1]},
    ]
    assert [o["name"] for o in meta["outputs"]] == ["total", "peak"]


def test_binary_rest_reads_each_tensor_at_its_offset(two_inputs_url: str) -> None:
    header = orjson.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [2, 4], "datatype": "FP32",
                 "parameters": {"binary_data_size": X.nbytes}},
                {"name": "scale", "shape": [2, 1], "datatype": "INT64",
                 "parameters": {"binary_data_size": SCALE.nbytes}},
            ],
            "parameters": {"binary_data_output": True},
        }
    )  # fmt: skip
    reply = httpx.post(
        f"{two_inputs_url}/v2/models/two/infer",
        content=header + X.tobytes() + SCALE.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header))},
        timeout=30,
    )
    assert reply.status_code == 200
    length = int(reply.headers["inference-header-content-length"])
    doc = orjson.loads(reply.content[:length])
    sizes = [o["parameters"]["binary_data_size"] for o in doc["outputs"]]
    blobs = reply.content[length:]
    total = np.frombuffer(blobs[: sizes[0]], dtype=np.float32).reshape(2, 1)
    peak = np.frombuffer(blobs[sizes[0] :], dtype=np.float32).reshape(2, 1)
    assert (total.tolist(), peak.tolist()) == (TOTAL.tolist(), PEAK.tolist())


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        # a missing input is named with the ones the model takes
        ({"x": X.tolist()}, r"takes inputs \['x', 'scale'\], got \['x'\]"),
        # one input's sample shape is wrong
        ({"x": X[:, :3].tolist(), "scale": SCALE.tolist()}, r"input 'x' shape \[2, 3\]"),
        # the inputs disagree on the number of samples
        ({"x": X.tolist(), "scale": SCALE[:1].tolist()}, "different numbers of samples"),
    ],
)
def test_bad_named_inputs_get_400_naming_the_problem(
    two_inputs_url: str, inputs: dict[str, list[object]], message: str
) -> None:
    reply = httpx.post(f"{two_inputs_url}/predict", json={"inputs": inputs}, timeout=30)
    assert reply.status_code == 400
    assert re.search(message, reply.json()["error"])


def test_oip_dtype_mismatch_is_400_on_the_named_input(two_inputs_url: str) -> None:
    body = {
        "inputs": [
            {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]},
            {"name": "scale", "shape": [1, 1], "datatype": "FP32", "data": [2.0]},
        ]
    }
    reply = httpx.post(f"{two_inputs_url}/v2/models/two/infer", json=body, timeout=30)
    assert reply.status_code == 400
    assert (
        "input 'scale' datatype float32 does not match the model's int64" in reply.json()["error"]
    )
