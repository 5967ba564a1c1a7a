"""`kilowatt serve` as a process: SIGTERM drain, worker processes, models from the registry."""

from __future__ import annotations

import os
import signal
import socket
import textwrap
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
import torch
from serve_helpers import serve_process, small_mlp

HELD_MODEL = textwrap.dedent(
    """
    import os
    import time

    HOLD = os.environ["KW_TEST_HOLD_FILE"]


    class Held:
        input_shape = (2,)

        def load(self):
            pass

        def predict(self, batch):
            while os.path.exists(HOLD):  # the test releases the model by deleting the file
                time.sleep(0.005)
            return batch + 1
    """
)


def _metric_value(url: str, name: str) -> float:
    total = 0.0
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _refuses_connections(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=1):
            return False
    except OSError:
        return True


def _wait(condition, timeout_s: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_sigterm_drains_every_admitted_request(tmp_path: Path) -> None:
    (tmp_path / "kw_held_model.py").write_text(HELD_MODEL)
    hold = tmp_path / "hold"
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    env = {"PYTHONPATH": path, "KW_TEST_HOLD_FILE": str(hold)}
    args = ["kw_held_model:Held", "--name", "m", "--max-batch-size", "2", "--slo-ms", "60000"]
    with serve_process(args, env) as (url, process):
        hold.touch()
        replies: list[httpx.Response] = []

        def send(value: int) -> None:
            replies.append(
                httpx.post(f"{url}/predict", json={"inputs": [value, value]}, timeout=60)
            )

        senders = [threading.Thread(target=send, args=(i,)) for i in range(6)]
        for sender in senders:
            sender.start()
        _wait(lambda: _metric_value(url, "kilowatt_serve_in_flight_requests") == 6)
        process.send_signal(signal.SIGTERM)
        _wait(lambda: _refuses_connections(url))  # stopped accepting, requests still held
        hold.unlink()
        for sender in senders:
            sender.join(60)
        # uvicorn re-raises the signal once drained: the conventional "ended by SIGTERM".
        assert process.wait(60) == -signal.SIGTERM
    assert sorted(r.status_code for r in replies) == [200] * 6
    assert sorted(r.json()["outputs"][0] for r in replies) == [float(i + 1) for i in range(6)]


@pytest.mark.slow
def test_two_workers_report_metrics_summed_over_processes(mlp_file: Path) -> None:
    with serve_process([str(mlp_file), "--name", "mlp", "--workers", "2"]) as (url, _):
        sample = np.zeros(16, dtype=np.float32).tolist()
        for _ in range(30):  # a new connection each time, so both workers take some
            assert httpx.post(f"{url}/predict", json={"inputs": sample}).status_code == 200
        text = httpx.get(f"{url}/metrics").text
    lines = [line for line in text.splitlines() if line.startswith("kilowatt_serve_requests_total")]
    # One aggregated sample, not one per process.
    assert lines == ['kilowatt_serve_requests_total{model="mlp",status="200",version="1"} 30.0']


def test_serve_registry_version_records_the_deployment(tmp_path: Path) -> None:
    import kilowatt
    from kilowatt.store import open_store

    model_path = tmp_path / "mlp.pt"
    from serve_helpers import save_torchscript

    save_torchscript(small_mlp(), model_path)
    with kilowatt.start_run(project="serve-test") as run:
        run.log_artifact(model_path)
        version = kilowatt.register_model("mlp", run=run, artifact="mlp.pt", aliases=["production"])
    sample = np.random.default_rng(0).standard_normal(16).astype(np.float32)
    with serve_process(["mlp@production"]) as (url, _):
        reply = httpx.post(f"{url}/v2/models/mlp/infer", json={
            "inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": sample.tolist()}]
        })  # fmt: skip
        with open_store() as store:
            running = store.list_deployments("mlp")
        # The energy meter starts beside the model; once it reads, requests carry joules.
        infer = f"{url}/v2/models/mlp/infer"
        body = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32",
                            "data": sample.tolist()}]}  # fmt: skip
        _wait(lambda: httpx.post(infer, json=body).status_code == 200
              and _metric_value(url, "kilowatt_serve_energy_joules_total") > 0)  # fmt: skip
    assert reply.status_code == 200 and reply.json()["model_version"] == str(version.version)
    with torch.inference_mode():
        expected = small_mlp()(torch.from_numpy(sample[None])).numpy().ravel()
    np.testing.assert_allclose(reply.json()["outputs"][0]["data"], expected, atol=1e-4)
    with open_store() as store:
        deployments = store.list_deployments("mlp")
        graph = store.lineage_of(store.get_model_version("mlp:1"))
    assert [(d.status, d.model_version_id) for d in running] == [("running", version.id)]
    # the server picked its port (--port 0) and recorded the one it bound
    assert running[0].endpoint == f"{url}/v2/models/mlp/versions/1"
    assert urlsplit(url).port not in (None, 0)
    assert [d.status for d in deployments] == ["stopped"]
    assert ("deployment", str(deployments[0].id)) in graph.nodes
