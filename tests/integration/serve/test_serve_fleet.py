"""Hot reload and traffic changes reach every worker of a server, whichever worker the
admin call reached, and the call returns once all of them have switched."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from serve_helpers import Gate, make_server, serve_process

from kilowatt.serve.errors import UnknownModel
from kilowatt.serve.fleet import Fleet
from kilowatt.serve.process import ServerProcess
from kilowatt.spec import ModelSpec


def _answers_by_worker(
    url: str, workers: int, max_requests: int = 400, path: str = "/predict"
) -> dict[str, set[str]]:
    """Model versions each worker answered with (the status for an error), asking until
    every worker has answered."""
    sample = {"inputs": np.zeros(16, dtype=np.float32).tolist()}
    if path != "/predict":
        sample = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", **sample}]}
    seen: dict[str, set[str]] = {}
    for count in range(max_requests):  # a new connection each time, so every worker takes some
        reply = httpx.post(f"{url}{path}", json=sample, timeout=30)
        pid = reply.headers["kilowatt-worker-pid"]
        ok = reply.status_code == 200
        answer = reply.headers["kilowatt-model-version"] if ok else str(reply.status_code)
        seen.setdefault(pid, set()).add(answer)
        if len(seen) == workers and count >= 20:
            break
    assert len(seen) == workers, f"only workers {sorted(seen)} answered"
    return seen


@pytest.mark.slow
def test_reload_and_weights_through_one_worker_switch_every_worker(mlp_file: Path) -> None:
    args = [str(mlp_file), "--name", "mlp", "--workers", "2", "--admin"]
    with serve_process(args) as (url, _):
        before = _answers_by_worker(url, workers=2)
        assert all(versions == {"1"} for versions in before.values())
        load = {"parameters": {"source": str(mlp_file), "version": "2", "weights": {"2": 1.0}}}
        reply = httpx.post(f"{url}/v2/repository/models/mlp/load", json=load, timeout=120)
        assert reply.json() == {"name": "mlp", "version": "2", "loaded": True}
        # The call returned: every worker answers with the new version from now on.
        assert _answers_by_worker(url, workers=2) == {pid: {"2"} for pid in before}
        shift = httpx.post(f"{url}/v2/repository/models/mlp/weights", json={"1": 1.0, "2": 0.0})
        assert shift.status_code == 200
        assert _answers_by_worker(url, workers=2) == {pid: {"1"} for pid in before}


@pytest.mark.slow
def test_grpc_load_and_unload_through_one_worker_switch_every_worker(
    mlp_file: Path, tmp_path: Path
) -> None:
    args = [str(mlp_file), "--name", "mlp", "--workers", "2", "--admin", "--grpc-port", "0"]
    with ServerProcess(args, log_path=tmp_path / "serve.log", ready_timeout_s=120) as server:
        url = server.endpoint
        before = _answers_by_worker(url, workers=2)
        client = triton.InferenceServerClient(server.grpc_endpoint.removeprefix("grpc://"))
        config = {"source": str(mlp_file), "version": "2", "weights": {"2": 1.0}}
        client.load_model("mlp", config=json.dumps(config))
        assert _answers_by_worker(url, workers=2) == {pid: {"2"} for pid in before}
        config = {"source": str(mlp_file), "version": "1", "weights": {"1": 1.0}}
        client.load_model("mlp", config=json.dumps(config))  # a hot reload of version 1
        assert _answers_by_worker(url, workers=2) == {pid: {"1"} for pid in before}
        unload = triton.service_pb2.RepositoryModelUnloadRequest(model_name="mlp")
        unload.parameters["version"].string_param = "2"
        client._client_stub.RepositoryModelUnload(unload, timeout=120)
        # Version 2 is gone from every worker.
        gone = _answers_by_worker(url, workers=2, path="/v2/models/mlp/versions/2/infer")
        assert gone == {pid: {"404"} for pid in before}


def test_a_change_fails_for_the_caller_and_later_workers_catch_up(tmp_path: Path) -> None:
    gate = Gate()
    gate.open.set()
    first = make_server(ModelSpec(name="m", source="scale:1"), factory=gate)
    second = make_server(ModelSpec(name="m", source="scale:1"), factory=gate)

    async def scenario() -> None:
        await asyncio.to_thread(first.load)
        await asyncio.to_thread(second.load)
        # Two workers of one server, told apart by two live process ids.
        one = Fleet(tmp_path, first, pid=os.getpid())
        await one.start()
        spec = ModelSpec(name="m", source="scale:3", version="2").model_dump()
        await one.submit({"op": "load", "spec": spec, "weights": {"2": 1.0}})
        with pytest.raises(UnknownModel, match="no version"):
            await one.submit({"op": "weights", "name": "m", "weights": {"9": 1.0}})
        late = Fleet(tmp_path, second, pid=os.getppid())
        await late.start()  # a worker that starts later replays what it missed
        answers = [await s.infer("m", np.ones((1, 2), np.float32)) for s in (first, second)]
        await one.stop()
        await late.stop()
        assert [(a.version, a.outputs.tolist()) for a in answers] == [("2", [[3.0, 3.0]])] * 2

    asyncio.run(scenario())
