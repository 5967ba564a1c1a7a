"""The public API (``kilowatt.__all__``) works every time, whatever has been imported.

Importing a subpackage binds its name on ``kilowatt``; a public function of the same name
would then be shadowed by the module. So every subpackage is imported first, and every
public function is called twice.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import signal
import types
from pathlib import Path
from typing import Any

import pytest

import kilowatt
from kilowatt.errors import SpecError

HANDLER = """
class Double:
    input_shape = (2,)

    def load(self):
        pass

    def predict(self, batch):
        return batch * 2
"""


@pytest.fixture(scope="module", autouse=True)
def every_subpackage_imported() -> list[str]:
    names = []
    for module in pkgutil.walk_packages(kilowatt.__path__, "kilowatt."):
        if module.name.startswith("kilowatt.store.migrations."):
            continue  # Alembic's scripts, run by Alembic against a live connection
        importlib.import_module(module.name)
        names.append(module.name)
    return names


def test_every_public_name_is_callable_and_no_subpackage_shadows_one(
    every_subpackage_imported: list[str],
) -> None:
    subpackages = {name.split(".")[1] for name in every_subpackage_imported}
    public = [name for name in kilowatt.__all__ if name != "__version__"]
    assert set(public).isdisjoint(subpackages)
    for name in public:
        value = getattr(kilowatt, name)
        assert callable(value) and not isinstance(value, types.ModuleType), name


def test_make_plan_twice() -> None:
    spec = {
        "model": {"architecture": "generic", "params": 1.2e7, "forward_flops_per_sample": 1.8e9},
        "train": {"samples": 50000, "epochs": 10, "precision": "fp32"},
        "constraints": {"instances": ["local-cpu"]},
    }
    first, second = kilowatt.make_plan(spec), kilowatt.make_plan(spec)
    assert first.recommendation.instance == second.recommendation.instance == "local-cpu"


def test_tracking_functions_twice(tmp_path: Path) -> None:
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"weights")
    runs = []
    for _ in range(2):
        with kilowatt.start_run(project="api") as run:
            run.log_metrics({"loss": 0.5}, step=1)
        runs.append(run.id)
    versions = [
        kilowatt.register_model("api-model", run=run_id, artifact=weights) for run_id in runs
    ]
    assert [v.version for v in versions] == [1, 2]
    graphs = [kilowatt.lineage("api-model:1"), kilowatt.lineage(versions[1])]
    assert ("run", runs[0]) in graphs[0].nodes and ("run", runs[1]) in graphs[1].nodes


def test_trainer_and_error_twice() -> None:
    import torch

    data = torch.utils.data.TensorDataset(torch.zeros(8, 2), torch.zeros(8, 1))
    trainers = [
        kilowatt.Trainer(
            torch.nn.Linear(2, 1), train_data=data, loss_fn=torch.nn.functional.mse_loss, steps=3
        )
        for _ in range(2)
    ]
    assert [t.options.steps for t in trainers] == [3, 3]
    with pytest.raises(kilowatt.KilowattError):
        raise kilowatt.KilowattError("first")
    assert str(kilowatt.KilowattError("second")) == "second"


class _StopWhenDeployed:
    """Ends the server it is attached to as soon as the model is loaded, as SIGTERM would."""

    def __init__(self) -> None:
        self.deployed: list[str] = []

    def on_deploy(self, event: Any) -> None:
        self.deployed.append(event.spec.name)
        os.kill(os.getpid(), signal.SIGTERM)

    def on_undeploy(self, event: Any) -> None:
        pass


def test_run_server_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "kw_api_model.py").write_text(HANDLER)
    monkeypatch.syspath_prepend(str(tmp_path))
    stopper = _StopWhenDeployed()
    terms: list[int] = []
    # uvicorn handles SIGTERM while it serves and raises it again once stopped: catch that.
    previous = signal.signal(signal.SIGTERM, lambda signum, _: terms.append(signum))
    try:
        for label in ("first", "second"):
            kilowatt.run_server(
                "kw_api_model:Double", name=label, port=0, callbacks=[stopper], meter=None
            )
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert stopper.deployed == ["first", "second"]
    assert terms == [signal.SIGTERM, signal.SIGTERM]
    with pytest.raises(SpecError, match="port"):  # and it still validates after serving
        kilowatt.run_server("kw_api_model:Double", port=-1)
