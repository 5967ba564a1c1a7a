"""Serving on a local Ray cluster: kilowatt's engine in Ray Serve replicas, autoscaled."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kilowatt.backends.ray import RayBackend
from kilowatt.backends.ray_serve import RayDeployment
from kilowatt.spec import ServeSpec, Settings

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ray = pytest.importorskip("ray")
HERE = Path(__file__).resolve().parent
REQUEST = {"id": "r1", "inputs": [{"name": "input0", "shape": [1, 3], "datatype": "FP32",
                                   "data": [1.0, 2.0, 3.0]}]}  # fmt: skip


# Replicas report their load every 0.5 s instead of every 10 s, so scaling follows quickly.
_FAST_METRICS = {
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
}


@pytest.fixture(scope="module")
def deployment() -> Iterator[RayDeployment]:
    from ray import serve

    saved = {name: os.environ.get(name) for name in _FAST_METRICS}
    os.environ.update(_FAST_METRICS)  # inherited by the processes ray.init starts
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        spec = ServeSpec.model_validate(
            {
                "models": [
                    {"name": "double", "source": "backends_ray_model:SlowDouble",
                     "format": "handler", "input_shape": [3]}
                ],
                "port": 0,
                "grpc_port": 0,
                # Scaling, not shedding, is under test: an objective no busy machine misses.
                "slo": {"latency_s": 10.0},
                "backend": {"kind": "ray", "ray": {
                    "cpus_per_worker": 0.5, "min_replicas": 1, "max_replicas": 2,
                    "target_ongoing_requests": 1, "upscale_delay_s": 0.5,
                    "downscale_delay_s": 2, "look_back_period_s": 12}},
            }
        )  # fmt: skip
        deployed = RayBackend(Settings.from_env()).deploy(spec, workdir=str(HERE))
        _wait_for(lambda: _ready(deployed.url), "the deployment to answer")
        yield deployed
        deployed.stop()
    finally:
        serve.shutdown()
        ray.shutdown()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 180.0) -> None:
    # The timeout only bounds a broken run; nothing is asserted about how long it took.
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


def test_answers_open_inference_protocol_requests(deployment: RayDeployment) -> None:
    reply = httpx.post(f"{deployment.url}/v2/models/double/infer", json=REQUEST, timeout=30)
    assert reply.status_code == 200
    body = reply.json()
    assert body["model_name"] == "double"
    assert body["id"] == "r1"
    assert body["outputs"][0]["shape"] == [1, 3]
    assert body["outputs"][0]["data"] == [2.0, 4.0, 6.0]
    metadata = httpx.get(f"{deployment.url}/v2/models/double", timeout=30).json()
    assert metadata["inputs"][0]["shape"] == [-1, 3]


def test_grpc_proxy_serves_the_inference_service(deployment: RayDeployment) -> None:
    import numpy as np
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    assert deployment.grpc_target is not None
    client = triton.InferenceServerClient(deployment.grpc_target)
    assert client.is_server_ready() and client.is_model_ready("double")
    tensor = triton.InferInput("x", [1, 3], "FP32")
    tensor.set_data_from_numpy(np.array([[1, 2, 3]], dtype=np.float32))
    assert client.infer("double", [tensor]).as_numpy("output0").tolist() == [[2.0, 4.0, 6.0]]
    with pytest.raises(InferenceServerException, match="no model named 'nope'") as error:
        client.infer("nope", [tensor])
    assert error.value.status() == "StatusCode.NOT_FOUND"


def test_grpc_proxy_serves_the_bidirectional_stream(deployment: RayDeployment) -> None:
    import queue

    import numpy as np
    import tritonclient.grpc as triton

    assert deployment.grpc_target is not None
    client = triton.InferenceServerClient(deployment.grpc_target)
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for request_id, values in (("a", [1, 2, 3]), ("b", [4, 5, 6])):
            tensor = triton.InferInput("x", [1, 3], "FP32")
            tensor.set_data_from_numpy(np.array([values], dtype=np.float32))
            client.async_stream_infer("double", [tensor], request_id=request_id)
        tensor = triton.InferInput("x", [1, 3], "FP32")
        tensor.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32))
        client.async_stream_infer("nope", [tensor], request_id="c")
        got = [answers.get(timeout=60) for _ in range(3)]
    finally:
        client.stop_stream()
    outputs = {
        result.get_response().id: result.as_numpy("output0").tolist()
        for result, error in got
        if error is None
    }
    assert outputs == {"a": [[2.0, 4.0, 6.0]], "b": [[8.0, 10.0, 12.0]]}
    errors = [str(error) for _, error in got if error is not None]
    assert len(errors) == 1 and "no model named 'nope'" in errors[0]


def test_unknown_model_gets_404(deployment: RayDeployment) -> None:
    reply = httpx.post(f"{deployment.url}/v2/models/nope/infer", json=REQUEST, timeout=30)
    assert reply.status_code == 404
    assert "nope" in reply.json()["error"]


def test_scales_to_two_replicas_under_load_and_back(deployment: RayDeployment) -> None:
    assert deployment.replicas() == 1
    stop = threading.Event()
    answers: list[int] = []

    def client() -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                reply = http.post(f"{deployment.url}/v2/models/double/infer", json=REQUEST)
                answers.append(reply.status_code)

    clients = [threading.Thread(target=client) for _ in range(6)]
    for thread in clients:
        thread.start()
    try:
        _wait_for(lambda: deployment.replicas() == 2, "a second replica under load")
    finally:
        stop.set()
        for thread in clients:
            thread.join()
    assert set(answers) == {200}
    _wait_for(lambda: deployment.replicas() == 1, "the scale-down once idle")
