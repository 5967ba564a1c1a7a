"""The HTTP server on 127.0.0.1: correctness, batching, overload, traffic and bad requests."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import torch
from serve_helpers import Gate, make_server, metric, running, small_mlp

from kilowatt.spec import ModelSpec

SAMPLES = np.random.default_rng(1).standard_normal((3, 16)).astype(np.float32)


def _direct(batch: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return small_mlp()(torch.from_numpy(batch)).numpy()


def _post_many(url: str, bodies: list[dict[str, Any]], headers: dict[str, str] | None = None):
    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=len(bodies))
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            return await asyncio.gather(
                *(client.post(url, json=b, headers=headers) for b in bodies)
            )

    return asyncio.run(run())


def test_outputs_equal_the_model_on_every_route(mlp_file: Path) -> None:
    server = make_server(ModelSpec(name="mlp", source=str(mlp_file)))
    expected = _direct(SAMPLES)
    with running(server) as url, httpx.Client(base_url=url, timeout=30) as client:
        one = client.post("/predict", json={"inputs": SAMPLES[0].tolist()})
        assert one.status_code == 200
        np.testing.assert_allclose(one.json()["outputs"], expected[0], atol=1e-4)
        batch = client.post("/predict", json={"inputs": SAMPLES.tolist()})
        np.testing.assert_allclose(batch.json()["outputs"], expected, atol=1e-4)
        tensor = {
            "name": "x",
            "shape": [3, 16],
            "datatype": "FP32",
            "data": SAMPLES.ravel().tolist(),
        }
        oip = client.post("/v2/models/mlp/versions/1/infer", json={"id": "a", "inputs": [tensor]})
        body = oip.json()
        assert (body["model_name"], body["model_version"], body["id"]) == ("mlp", "1", "a")
        assert body["outputs"][0]["shape"] == [3, 4]
        np.testing.assert_allclose(
            np.reshape(body["outputs"][0]["data"], (3, 4)), expected, atol=1e-4
        )


def test_binary_tensor_extension(mlp_file: Path) -> None:
    server = make_server(ModelSpec(name="mlp", source=str(mlp_file)))
    header = orjson.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [3, 16], "datatype": "FP32",
                 "parameters": {"binary_data_size": SAMPLES.nbytes}}
            ],
            "outputs": [{"name": "output0", "parameters": {"binary_data": True}}],
        }
    )  # fmt: skip
    with running(server) as url:
        reply = httpx.post(
            f"{url}/v2/models/mlp/infer",
            content=header + SAMPLES.tobytes(),
            headers={"Inference-Header-Content-Length": str(len(header))},
        )
    assert reply.status_code == 200
    length = int(reply.headers["inference-header-content-length"])
    doc = orjson.loads(reply.content[:length])
    out = np.frombuffer(reply.content[length:], dtype=np.float32).reshape(
        doc["outputs"][0]["shape"]
    )
    np.testing.assert_allclose(out, _direct(SAMPLES), atol=1e-4)


def test_batches_really_form_under_concurrency() -> None:
    gate = Gate()
    server = make_server(ModelSpec(name="m", source="scale:2"), factory=gate)
    with running(server) as url:
        gate.armed = True
        results: list[Any] = []
        first = threading.Thread(
            target=lambda: results.extend(_post_many(f"{url}/predict", [{"inputs": [1, 1]}]))
        )
        first.start()
        assert gate.started.wait(30)  # the model is now busy with a batch of one
        rest = threading.Thread(
            target=lambda: results.extend(
                _post_many(f"{url}/predict", [{"inputs": [i, i]} for i in range(10)])
            )
        )
        rest.start()
        _wait_for(lambda: server.engine("m").batcher.depth == 10)
        gate.open.set()
        first.join(30)
        rest.join(30)
    assert sorted(r.json()["outputs"][0] for r in results) == sorted(
        [2.0] + [2.0 * i for i in range(10)]
    )
    assert gate.batches == [1, 10]
    assert metric(server, "kilowatt_serve_batch_size_sum", model="m", version="1") == 11
    assert metric(server, "kilowatt_serve_batch_size_count", model="m", version="1") == 2


def _wait_for(condition: Any, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def test_overload_refuses_at_once_with_bounded_queue_and_admitted_within_slo() -> None:
    gate = Gate()
    server = make_server(
        ModelSpec(name="m", source="scale:1"),
        factory=gate,
        batching={"queue_capacity": 4, "max_batch_size": 8},
        slo={"latency_s": 10.0},
    )
    with running(server) as url:
        gate.armed = True
        admitted: list[httpx.Response] = []
        first = threading.Thread(
            target=lambda: admitted.extend(_post_many(f"{url}/predict", [{"inputs": [0, 0]}]))
        )
        first.start()
        assert gate.started.wait(30)  # the model is busy with the first request
        busy = threading.Thread(
            target=lambda: admitted.extend(_post_many(f"{url}/predict", [{"inputs": [0, 0]}] * 4))
        )
        busy.start()
        _wait_for(lambda: server.engine("m").batcher.depth == 4)
        # The model is still blocked: any answer now comes from admission control alone.
        refused = _post_many(f"{url}/predict", [{"inputs": [1, 1]}] * 20)
        assert not gate.open.is_set()
        gate.open.set()
        first.join(30)
        busy.join(30)
    assert {r.status_code for r in refused} == {429}
    assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
    assert "queue full (4 requests waiting)" in refused[0].json()["error"]
    assert [r.status_code for r in admitted] == [200] * 5
    assert (
        metric(server, "kilowatt_serve_shed_requests_total", model="m", reason="queue_full") == 20
    )
    within_slo = metric(
        server, "kilowatt_serve_request_latency_seconds_bucket", model="m", version="1", le="10.0"
    )
    assert within_slo == 5  # every admitted request answered within the 10 s SLO


def test_deadline_that_cannot_be_met_gets_503_at_once() -> None:
    gate = Gate()
    server = make_server(ModelSpec(name="m", source="scale:1"), factory=gate)
    with running(server) as url:
        gate.armed = True
        gate.open.set()
        slow = server.engine("m").batcher
        httpx.post(f"{url}/predict", json={"inputs": [1, 1]})
        slow.batch_compute_s = 0.5  # as if each batch took half a second
        reply = httpx.post(
            f"{url}/predict", json={"inputs": [1, 1]}, headers={"kilowatt-deadline-ms": "10"}
        )
    assert reply.status_code == 503
    assert reply.headers["retry-after"] == "1"
    assert "cannot answer within the deadline" in reply.json()["error"]


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/predict", b'{"inputs": [1, 2, 3]}', 400, "does not match the model's [-1, 16]"),
        ("/predict", b'{"inputs": [1, ', 400, "not valid JSON"),
        ("/predict", b'{"inputs": ["x"]}', 400, "cannot be read as a FP32 tensor"),
        ("/v2/models/mlp/infer",
         b'{"inputs": [{"name": "x", "shape": [1, 16], "datatype": "INT64", "data": '
         + str(list(range(16))).encode() + b"}]}", 400, "datatype int64 does not match"),
        ("/v2/models/nope/infer", b"{}", 404, "no model named 'nope'"),
        ("/v2/models/mlp/versions/7/infer", b"{}", 404, "no version '7'"),
        ("/predict", b"[" + b"0," * 600_000 + b"0]", 413, "accepts at most 1048576"),
    ],
)  # fmt: skip
def test_malformed_requests_get_4xx_and_the_server_carries_on(
    mlp_file: Path, path: str, body: bytes, status: int, message: str
) -> None:
    server = make_server(ModelSpec(name="mlp", source=str(mlp_file)), max_body_bytes=1 << 20)
    with running(server, max_body_bytes=1 << 20) as url, httpx.Client(base_url=url) as client:
        bad = client.post(path, content=body)
        assert bad.status_code == status
        assert message in bad.json()["error"]
        good = client.post("/predict", json={"inputs": SAMPLES[0].tolist()})
        assert good.status_code == 200


def test_ab_split_over_http_is_sticky_by_routing_key() -> None:
    server = make_server(
        ModelSpec(name="m", source="scale:1", version="a", weight=0.7),
        ModelSpec(name="m", source="scale:2", version="b", weight=0.3),
        factory=Gate(),  # never armed: plain scaling models
    )
    with running(server) as url, httpx.Client(base_url=url) as client:

        def version(key: str) -> str:
            reply = client.post(
                "/predict", json={"inputs": [1, 1]}, headers={"kilowatt-routing-key": key}
            )
            expected = 1.0 if reply.headers["kilowatt-model-version"] == "a" else 2.0
            assert reply.json()["outputs"] == [expected, expected]
            return reply.headers["kilowatt-model-version"]

        spread = [version(f"k{i}") for i in range(400)]
        sticky = {version("user-42") for _ in range(20)}
    # Binomial(400, 0.3): standard deviation 0.023; 0.1 is over 4 of them.
    assert spread.count("b") / 400 == pytest.approx(0.3, abs=0.1)
    assert len(sticky) == 1


def test_shadow_traffic_never_changes_responses() -> None:
    server = make_server(
        ModelSpec(name="m", source="scale:1", version="live"),
        ModelSpec(name="m", source="scale:-1", version="candidate", shadow=True),
        factory=Gate(),
    )
    with running(server) as url, httpx.Client(base_url=url) as client:
        replies = [client.post("/predict", json={"inputs": [i, i]}) for i in range(1, 21)]
        labels = {"model": "m", "version": "candidate", "outcome": "disagree"}
        _wait_for(lambda: metric(server, "kilowatt_serve_shadow_requests_total", **labels) == 20)
    assert [r.json()["outputs"] for r in replies] == [[float(i), float(i)] for i in range(1, 21)]
    assert {r.headers["kilowatt-model-version"] for r in replies} == {"live"}


def test_hot_reload_under_load_has_zero_failed_requests() -> None:
    server = make_server(ModelSpec(name="m", source="scale:1", version="1"), factory=Gate())
    statuses: list[int] = []
    versions: list[str] = []
    stop = threading.Event()

    def load(url: str) -> None:
        with httpx.Client(base_url=url) as client:
            while not stop.is_set():
                reply = client.post("/predict", json={"inputs": [1, 1]})
                statuses.append(reply.status_code)
                versions.append(reply.headers.get("kilowatt-model-version", "?"))

    with running(server, admin=True) as url:
        workers = [threading.Thread(target=load, args=(url,)) for _ in range(4)]
        for worker in workers:
            worker.start()
        _wait_for(lambda: len(statuses) >= 50)
        loaded = httpx.post(
            f"{url}/v2/repository/models/m/load",
            json={"parameters": {"source": "scale:3", "version": "2", "weights": {"2": 1.0}}},
            timeout=60,
        )
        assert loaded.status_code == 200
        index = httpx.get(f"{url}/v2/repository/index").json()
        assert [(e["version"], e["state"]) for e in index] == [("1", "READY"), ("2", "READY")]
        unloaded = httpx.post(
            f"{url}/v2/repository/models/m/unload", json={"parameters": {"version": "1"}}
        )
        assert unloaded.status_code == 200
        index = httpx.get(f"{url}/v2/repository/index").json()
        assert index == [{"name": "m", "version": "2", "state": "READY"}]
        count = len(statuses)
        _wait_for(lambda: len(statuses) >= count + 50)
        stop.set()
        for worker in workers:
            worker.join(30)
    assert set(statuses) == {200}
    assert versions[0] == "1" and versions[-1] == "2"


def test_metadata_health_openapi_and_metrics(mlp_file: Path) -> None:
    server = make_server(ModelSpec(name="mlp", source=str(mlp_file)), cache_bytes=1 << 20)
    with running(server) as url, httpx.Client(base_url=url) as client:
        assert client.get("/v2/health/live").json() == {"live": True}
        assert client.get("/v2/health/ready").status_code == 200
        assert client.get("/v2").json()["extensions"] == [
            "binary_tensor_data", "model_repository", "kilowatt_predict",
        ]  # fmt: skip
        meta = client.get("/v2/models/mlp").json()
        assert meta["inputs"] == [{"name": "input0", "datatype": "FP32", "shape": [-1, 16]}]
        assert meta["outputs"] == [{"name": "output0", "datatype": "FP32", "shape": [-1, 4]}]
        assert client.get("/v2/models/mlp/versions/1/ready").status_code == 200
        paths = client.get("/openapi.json").json()["paths"]
        assert {"/predict", "/v2/models/{name}/infer", "/v2/health/ready"} <= set(paths)
        for _ in range(3):
            client.post("/predict", json={"inputs": SAMPLES[0].tolist()})
        text = client.get("/metrics").text
    assert 'kilowatt_serve_requests_total{model="mlp",status="200",version="1"} 3.0' in text
    assert 'kilowatt_serve_cache_hits_total{model="mlp",version="1"} 2.0' in text
    assert "kilowatt_serve_compute_latency_seconds_bucket" in text


def test_energy_per_request_from_the_meter(mlp_file: Path) -> None:
    class Meter:
        """Every window costs 0.5 J."""

        def begin_window(self, key: str) -> None:
            pass

        def end_window(self, key: str) -> Any:
            return type("M", (), {"energy_j": 0.5})()

    server = make_server(ModelSpec(name="mlp", source=str(mlp_file)))
    server.meter = Meter()
    with running(server) as url, httpx.Client(base_url=url) as client:
        for _ in range(4):
            client.post("/predict", json={"inputs": SAMPLES[0].tolist()})
    labels = {"model": "mlp", "version": "1"}
    assert metric(server, "kilowatt_serve_energy_joules_total", **labels) == pytest.approx(2.0)
    assert metric(
        server, "kilowatt_serve_energy_per_request_joules_sum", **labels
    ) == pytest.approx(2.0)
