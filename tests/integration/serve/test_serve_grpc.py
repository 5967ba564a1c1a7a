"""The Open Inference Protocol over gRPC, driven by Triton's own client (tritonclient),
on the same engines as HTTP."""

from __future__ import annotations

import json
import queue
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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


def _wait_for_queued(server: Any, depth: int) -> None:
    """Until model ``m`` has ``depth`` requests queued (30 s bounds a broken run only)."""
    deadline = time.monotonic() + 30
    while server.engine("m").batcher.depth < depth and time.monotonic() < deadline:
        time.sleep(0.01)


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
        _wait_for_queued(server, 1)
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
        assert {"ServerLive", "ModelMetadata", "ModelInfer", "ModelStreamInfer"} <= methods


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


class _Answers:
    """A tritonclient stream callback that collects (result, error) pairs in arrival order."""

    def __init__(self) -> None:
        self.received: queue.Queue[tuple[Any, Any]] = queue.Queue()

    def __call__(self, result: Any, error: Any) -> None:
        self.received.put((result, error))

    def next(self) -> tuple[Any, Any]:
        return self.received.get(timeout=30)


def test_stream_infer_answers_equal_unary_answers_and_echo_their_ids(mlp_grpc) -> None:
    server, _, target = mlp_grpc
    client = triton.InferenceServerClient(target)
    rows = np.random.default_rng(5).standard_normal((8, 16)).astype(np.float32)
    batches = {f"s{i}": rows[i : i + 1 + i % 3] for i in range(6)}  # 1 to 3 rows each
    unary = {rid: client.infer("mlp", [_input("x", b, "FP32")]) for rid, b in batches.items()}
    answers = _Answers()
    client.start_stream(callback=answers)
    for rid, batch in batches.items():  # all sent before any answer is read
        client.async_stream_infer("mlp", [_input("x", batch, "FP32")], request_id=rid)
    streamed = [answers.next() for _ in batches]
    client.stop_stream()
    assert [error for _, error in streamed] == [None] * len(batches)
    by_id = {result.get_response().id: result for result, _ in streamed}
    assert set(by_id) == set(batches)
    for rid, result in by_id.items():
        assert result.get_response().model_version == "1"
        got = result.as_numpy("output0")  # batched with other requests: rounding may differ
        np.testing.assert_allclose(got, unary[rid].as_numpy("output0"), atol=1e-5)
        np.testing.assert_allclose(got, _expected(batches[rid]), atol=1e-4)
    labels = {"model": "mlp", "version": "1", "status": "200"}
    assert metric(server, "kilowatt_serve_requests_total", **labels) == 2 * len(batches)


@contextmanager
def _stream_with_one_running(
    server: Any, gate: Gate, request_id: str
) -> Iterator[tuple[triton.InferenceServerClient, _Answers]]:
    """An open stream to model ``m`` whose first request (ones, ``request_id``) is running,
    held by ``gate`` until the test opens it."""
    with running_with_grpc(server) as (_, target):
        client = triton.InferenceServerClient(target)
        answers = _Answers()
        client.start_stream(callback=answers)
        gate.armed = True
        one = np.ones((1, 2), dtype=np.float32)
        client.async_stream_infer("m", [_input("x", one, "FP32")], request_id=request_id)
        assert gate.started.wait(30)  # the model is busy with that request
        yield client, answers


def test_requests_on_one_stream_are_batched_together() -> None:
    gate = Gate()
    server = make_server(ModelSpec(name="m", source="scale:2"), factory=gate, grpc_port=0)
    one = np.ones((1, 2), dtype=np.float32)
    with _stream_with_one_running(server, gate, "first") as (client, answers):
        for rid in ("second", "third"):
            client.async_stream_infer("m", [_input("x", 3 * one, "FP32")], request_id=rid)
        _wait_for_queued(server, 2)
        assert server.engine("m").batcher.depth == 2  # queued together, not one at a time
        gate.open.set()
        results = [answers.next() for _ in range(3)]
        client.stop_stream()
    values = {r.get_response().id: r.as_numpy("output0").tolist() for r, _ in results}
    assert values == {"first": [[2.0, 2.0]], "second": [[6.0, 6.0]], "third": [[6.0, 6.0]]}
    assert gate.batches == [1, 2]


def test_a_bad_request_on_a_stream_gets_an_error_message_and_the_stream_goes_on(
    mlp_grpc,
) -> None:
    _, _, target = mlp_grpc
    client = triton.InferenceServerClient(target)
    answers = _Answers()
    client.start_stream(callback=answers)
    sent = [
        ("mlp", SAMPLES[:, :3], r"shape \[3, 3\] does not match"),
        ("nope", SAMPLES, "no model named 'nope'"),
        ("mlp", SAMPLES, None),
    ]
    for model, batch, message in sent:  # one at a time: tritonclient's errors carry no id
        client.async_stream_infer(model, [_input("x", batch, "FP32")])
        result, error = answers.next()
        if message is None:
            assert error is None
            np.testing.assert_allclose(result.as_numpy("output0"), _expected(batch), atol=1e-4)
        else:
            assert result is None and re.search(message, error.message())
    client.stop_stream()


def test_stream_errors_carry_the_request_id_and_the_status_a_call_would_get(mlp_grpc) -> None:
    _, _, target = mlp_grpc

    def request(model: str, rid: str) -> pb.ModelInferRequest:
        message = pb.ModelInferRequest(model_name=model, id=rid)
        message.inputs.add(name="x", datatype="FP32", shape=SAMPLES.shape)
        message.raw_input_contents.append(SAMPLES.tobytes())
        return message

    sent = [request("mlp", "good"), request("nope", "unknown"), request("mlp", "again")]
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        replies = list(stub.ModelStreamInfer(iter(sent), timeout=30))
    by_id = {r.infer_response.id: r for r in replies}
    assert set(by_id) == {"good", "unknown", "again"}
    assert by_id["good"].error_message == by_id["again"].error_message == ""
    assert len(by_id["again"].infer_response.raw_output_contents) == 1
    failed = by_id["unknown"]
    assert "no model named 'nope'" in failed.error_message
    assert failed.infer_response.parameters["status"].string_param == "NOT_FOUND"


def test_a_full_queue_is_reported_on_the_stream_with_a_retry_hint() -> None:
    gate = Gate()
    server = make_server(
        ModelSpec(name="m", source="scale:1"),
        factory=gate,
        batching={"queue_capacity": 1, "max_batch_size": 1},
        grpc_port=0,
    )
    one = np.ones((1, 2), dtype=np.float32)
    with _stream_with_one_running(server, gate, "running") as (client, answers):
        client.async_stream_infer("m", [_input("x", one, "FP32")], request_id="queued")
        _wait_for_queued(server, 1)
        client.async_stream_infer("m", [_input("x", one, "FP32")], request_id="refused")
        result, error = answers.next()  # the refusal comes first: the model is still blocked
        assert result is None and "queue full (1 requests" in error.message()
        gate.open.set()
        finished = [answers.next() for _ in range(2)]
        client.stop_stream()
    assert sorted(r.get_response().id for r, e in finished if e is None) == ["queued", "running"]


def test_the_stream_deadline_holds_for_each_request_on_it() -> None:
    server = make_server(
        ModelSpec(name="m", source="scale:1"), factory=Gate(), slo={"latency_s": 10.0},
        grpc_port=0,
    )  # fmt: skip
    one = np.ones((1, 2), dtype=np.float32)
    request = pb.ModelInferRequest(model_name="m", id="late")
    request.inputs.add(name="x", datatype="FP32", shape=one.shape)
    request.raw_input_contents.append(one.tobytes())
    with running_with_grpc(server) as (_, target):
        server.engine("m").batcher.batch_compute_s = 5.0  # as if each batch took 5 s
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            [late] = stub.ModelStreamInfer(iter([request]), timeout=2.0)
            server.engine("m").batcher.batch_compute_s = 0.0
            [in_time] = stub.ModelStreamInfer(iter([request]), timeout=30.0)
    assert "cannot answer within" in late.error_message
    assert late.infer_response.parameters["status"].string_param == "DEADLINE_EXCEEDED"
    assert in_time.error_message == "" and len(in_time.infer_response.raw_output_contents) == 1
