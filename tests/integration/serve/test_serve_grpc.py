"""The Open Inference Protocol over gRPC, driven by Triton's own client (tritonclient),
on the same engines as HTTP."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import psutil
import pytest
import torch
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from serve_helpers import (
    TWO_INPUTS,
    Gate,
    TwoInputs,
    make_server,
    metric,
    running_with_grpc,
    save_torchscript,
    small_mlp,
)
from tritonclient.utils import InferenceServerException

from kilowatt.serve.grpc import grpc_predict_v2_pb2 as pb
from kilowatt.serve.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from kilowatt.serve.process import ServerProcess
from kilowatt.spec import ModelSpec

SAMPLES = np.random.default_rng(2).standard_normal((3, 16)).astype(np.float32)


def _expected(batch: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return small_mlp()(torch.from_numpy(batch)).numpy()


def _input(name: str, array: np.ndarray, datatype: str) -> triton.InferInput:
    """A tritonclient input; it always sends raw_input_contents."""
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


@pytest.fixture
def mlp_grpc(mlp_file: Path):
    server = make_server(ModelSpec(name="mlp", source=str(mlp_file)), grpc_port=0)
    with running_with_grpc(server) as (url, target):
        yield server, url, target


def test_tritonclient_health_and_metadata(mlp_grpc) -> None:
    _, _, target = mlp_grpc
    client = triton.InferenceServerClient(target)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("mlp") and not client.is_model_ready("nope")
    server_meta = client.get_server_metadata(as_json=True)
    assert server_meta["name"] == "kilowatt"
    assert "binary_tensor_data" in server_meta["extensions"]
    meta = client.get_model_metadata("mlp", as_json=True)
    assert meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "input0", "datatype": "FP32", "shape": ["-1", "16"]}]
    assert meta["outputs"] == [{"name": "output0", "datatype": "FP32", "shape": ["-1", "4"]}]


def test_tritonclient_infer_with_raw_contents_equals_the_model_and_is_counted(mlp_grpc) -> None:
    server, url, target = mlp_grpc
    client = triton.InferenceServerClient(target)
    result = client.infer("mlp", [_input("x", SAMPLES, "FP32")], request_id="r7")
    np.testing.assert_allclose(result.as_numpy("output0"), _expected(SAMPLES), atol=1e-4)
    response = result.get_response()
    assert (response.model_version, response.id) == ("1", "r7")
    assert len(response.raw_output_contents) == 1  # raw in, raw out (what Triton does)
    # The same engine as HTTP: the request is in the shared metrics HTTP exposes.
    labels = {"model": "mlp", "version": "1", "status": "200"}
    assert metric(server, "kilowatt_serve_requests_total", **labels) == 1
    assert 'status="200",version="1"} 1.0' in httpx.get(f"{url}/metrics").text


def test_typed_contents_in_typed_contents_out(mlp_grpc) -> None:
    _, _, target = mlp_grpc
    request = pb.ModelInferRequest(model_name="mlp", id="typed")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=SAMPLES.shape)
    tensor.contents.fp32_contents.extend(SAMPLES.ravel().tolist())
    with grpc.insecure_channel(target) as channel:
        reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert not reply.raw_output_contents
    (output,) = reply.outputs
    assert (output.name, output.datatype, list(output.shape)) == ("output0", "FP32", [3, 4])
    got = np.reshape(output.contents.fp32_contents, (3, 4))
    np.testing.assert_allclose(got, _expected(SAMPLES), atol=1e-4)


def test_two_input_model_over_grpc(tmp_path: Path) -> None:
    model = save_torchscript(TwoInputs(), tmp_path / "two.pt")
    server = make_server(ModelSpec(name="two", source=str(model), inputs=TWO_INPUTS), grpc_port=0)
    x = np.array([[1, 2, 3, 4], [-1, 0, 5, 2]], dtype=np.float32)
    scale = np.array([[2], [3]], dtype=np.int64)
    with running_with_grpc(server) as (_, target):
        client = triton.InferenceServerClient(target)
        inputs = [_input("scale", scale, "INT64"), _input("x", x, "FP32")]
        result = client.infer("two", inputs, outputs=[triton.InferRequestedOutput("peak")])
        assert [o.name for o in result.get_response().outputs] == ["peak"]
        assert result.as_numpy("peak").tolist() == [[4.0], [5.0]]
        both = client.infer("two", [_input("x", x, "FP32"), _input("scale", scale, "INT64")])
        assert both.as_numpy("total").tolist() == [[20.0], [18.0]]
        with pytest.raises(InferenceServerException, match=r"takes inputs \['x', 'scale'\]"):
            client.infer("two", [_input("x", x, "FP32")])


@pytest.mark.parametrize(
    ("model", "array", "status", "message"),
    [
        ("mlp", SAMPLES[:, :3], "StatusCode.INVALID_ARGUMENT", r"shape \[3, 3\] does not match"),
        ("mlp", SAMPLES.astype(np.float64), "StatusCode.INVALID_ARGUMENT", "datatype float64"),
        ("nope", SAMPLES, "StatusCode.NOT_FOUND", "no model named 'nope'"),
    ],
)
def test_bad_requests_get_their_grpc_status(
    mlp_grpc, model: str, array: np.ndarray, status: str, message: str
) -> None:
    _, _, target = mlp_grpc
    client = triton.InferenceServerClient(target)
    datatype = "FP64" if array.dtype == np.float64 else "FP32"
    with pytest.raises(InferenceServerException, match=message) as error:
        client.infer(model, [_input("x", array, datatype)])
    assert error.value.status() == status
    assert client.is_server_ready()  # the server carries on


def test_full_queue_is_resource_exhausted_and_a_hopeless_deadline_is_deadline_exceeded() -> None:
    gate = Gate()
    server = make_server(
        ModelSpec(name="m", source="scale:1"),
        factory=gate,
        batching={"queue_capacity": 1, "max_batch_size": 1},
        slo={"latency_s": 10.0},
        grpc_port=0,
    )
    one = np.ones((1, 2), dtype=np.float32)
    with running_with_grpc(server) as (_, target):
        client = triton.InferenceServerClient(target)
        gate.armed = True
        answers: list[np.ndarray] = []

        def call() -> None:
            answers.append(client.infer("m", [_input("x", one, "FP32")]).as_numpy("output0"))

        running_call = threading.Thread(target=call)
        running_call.start()
        assert gate.started.wait(30)  # the model is busy with the first request
        queued_call = threading.Thread(target=call)
        queued_call.start()
        deadline = time.monotonic() + 30
        while server.engine("m").batcher.depth < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(InferenceServerException, match=r"queue full \(1 requests") as full:
            client.infer("m", [_input("x", one, "FP32")])
        assert full.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        server.engine("m").batcher.batch_compute_s = 5.0  # as if each batch took 5 s
        with pytest.raises(InferenceServerException, match="cannot answer within") as late:
            client.infer("m", [_input("x", one, "FP32")], client_timeout=2.0)
        assert late.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        assert not gate.open.is_set()  # both answers came from admission control alone
        gate.open.set()
        running_call.join(30)
        queued_call.join(30)
    assert len(answers) == 2


def test_grpc_health_checking_and_reflection(mlp_grpc) -> None:
    _, _, target = mlp_grpc
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        database = ProtoReflectionDescriptorDatabase(channel)
        assert "inference.GRPCInferenceService" in database.get_services()
        service = database.FindFileContainingSymbol("inference.GRPCInferenceService")
        methods = {m.name for m in service.service[0].method}
        assert {"ServerLive", "ModelMetadata", "ModelInfer"} <= methods


def test_workers_serve_the_grpc_port_their_parent_bound(mlp_file: Path, tmp_path: Path) -> None:
    args = [str(mlp_file), "--name", "mlp", "--workers", "2", "--grpc-port", "0"]
    with ServerProcess(args, log_path=tmp_path / "serve.log", ready_timeout_s=120) as server:
        target = server.grpc_endpoint.removeprefix("grpc://")
        port = int(target.rsplit(":", 1)[1])
        workers = psutil.Process(server.pid).children(recursive=True)
        listening = {
            c.laddr.port
            for worker in workers
            for c in worker.net_connections("tcp")
            if c.status == psutil.CONN_LISTEN
        }
        result = triton.InferenceServerClient(target).infer("mlp", [_input("x", SAMPLES, "FP32")])
    # --grpc-port 0: the port was bound by the server, announced, and the workers serve it
    assert port != 0 and port in listening
    np.testing.assert_allclose(result.as_numpy("output0"), _expected(SAMPLES), atol=1e-4)


def _versions(client: triton.InferenceServerClient) -> list[tuple[str, str, str]]:
    index = client.get_model_repository_index().models
    return [(m.name, m.version, m.state) for m in index]


def _answer(client: triton.InferenceServerClient) -> tuple[str, list[float]]:
    """The version that answers a sample of ones, and its answer."""
    result = client.infer("m", [_input("x", np.ones((1, 2), np.float32), "FP32")])
    return result.get_response().model_version, result.as_numpy("output0")[0].tolist()


def test_tritonclient_lists_loads_reloads_and_unloads_models() -> None:
    server = make_server(ModelSpec(name="m", source="scale:1"), factory=Gate(), grpc_port=0)
    with running_with_grpc(server, admin=True) as (_, target):
        client = triton.InferenceServerClient(target)
        assert _versions(client) == [("m", "1", "READY")]
        config = {"source": "scale:3", "version": "2", "weights": {"2": 1.0}}
        client.load_model("m", config=json.dumps(config))
        assert _versions(client) == [("m", "1", "READY"), ("m", "2", "READY")]
        assert _answer(client) == ("2", [3.0, 3.0])
        client.load_model("m")  # a reload from the sources keeps the traffic weights
        assert _versions(client) == [("m", "1", "READY"), ("m", "2", "READY")]
        assert _answer(client) == ("2", [3.0, 3.0])
        # One version, through the raw stub: tritonclient's unload names no version.
        request = pb.RepositoryModelUnloadRequest(model_name="m")
        request.parameters["version"].string_param = "1"
        with grpc.insecure_channel(target) as channel:
            pb_grpc.GRPCInferenceServiceStub(channel).RepositoryModelUnload(request, timeout=30)
        assert _versions(client) == [("m", "2", "READY")]
        client.unload_model("m")  # every version
        assert _versions(client) == []
        assert not client.is_model_ready("m")


@pytest.mark.parametrize(
    ("call", "status", "message"),
    [
        (lambda c: c.unload_model("nope"), "StatusCode.NOT_FOUND", "no model named 'nope'"),
        (lambda c: c.load_model("nope"), "StatusCode.NOT_FOUND", "no model named 'nope'"),
        (
            lambda c: c.load_model("m", config='{"version": "2"}'),
            "StatusCode.INVALID_ARGUMENT",
            "(?s)invalid model parameters.*source",
        ),
        (
            lambda c: c.load_model("m", config="[1]"),
            "StatusCode.INVALID_ARGUMENT",
            "must be a JSON object",
        ),
        (
            lambda c: c.load_model("m", config="{}", files={"file:1/model.pt": b"x"}),
            "StatusCode.INVALID_ARGUMENT",
            r"parameters \['file:1/model.pt'\] are not supported",
        ),
    ],
)
def test_bad_repository_calls_get_their_grpc_status(call, status: str, message: str) -> None:
    server = make_server(ModelSpec(name="m", source="scale:1"), factory=Gate(), grpc_port=0)
    with running_with_grpc(server, admin=True) as (_, target):
        client = triton.InferenceServerClient(target)
        with pytest.raises(InferenceServerException, match=message) as error:
            call(client)
        assert error.value.status() == status
        assert _versions(client) == [("m", "1", "READY")]  # nothing changed


def test_repository_calls_are_refused_without_admin(mlp_grpc) -> None:
    _, _, target = mlp_grpc
    client = triton.InferenceServerClient(target)
    calls = [
        client.get_model_repository_index,
        lambda: client.load_model("mlp"),
        lambda: client.unload_model("mlp"),
    ]
    for call in calls:
        with pytest.raises(InferenceServerException, match="start it with --admin") as error:
            call()
        assert error.value.status() == "StatusCode.PERMISSION_DENIED"
    assert client.is_model_ready("mlp")  # still served
