"""Hot reload and traffic changes reach every worker of a server, whichever worker the
admin call reached, and the call returns once all of them have switched."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import httpx
import numpy as np
import pytest
from serve_helpers import Gate, make_server, serve_process

from kilowatt.serve.errors import UnknownModel
from kilowatt.serve.fleet import Fleet
from kilowatt.spec import ModelSpec


def _answers_by_worker(url: str, workers: int, max_requests: int = 400) -> dict[str, set[str]]:
    """Model versions each worker answered with, asking until every worker has answered."""
    sample = {"inputs": np.zeros(16, dtype=np.float32).tolist()}
    seen: dict[str, set[str]] = {}
    for count in range(max_requests):  # a new connection each time, so every worker takes some
        reply = httpx.post(f"{url}/predict", json=sample, timeout=30)
        assert reply.status_code == 200
        pid = reply.headers["kilowatt-worker-pid"]
        seen.setdefault(pid, set()).add(reply.headers["kilowatt-model-version"])
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
