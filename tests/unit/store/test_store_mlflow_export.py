"""``kilowatt runs export --mlflow``, checked with MLflow's own client on a sqlite backend."""

from __future__ import annotations

from pathlib import Path

import pytest

import kilowatt
from kilowatt.cli.main import main
from kilowatt.store import open_store


@pytest.mark.slow
def test_export_copies_params_metrics_usage_and_artifacts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)  # MLflow puts artifacts of a sqlite backend under the cwd
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"weights")
    with open_store() as store, kilowatt.start_run("exp", params={"lr": 0.1}, store=store) as run:
        for step in range(5):
            run.log_metrics({"loss": 1 / (step + 1)}, step=step)
        run.log_usage(energy_j=3600.0, cost_usd=0.01)
        run.log_artifact(weights)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    assert main(["runs", "export", run.id, "--mlflow", uri]) == 0
    mlflow_id = capsys.readouterr().out.split()[-1]

    client = MlflowClient(tracking_uri=uri)
    exported = client.get_run(mlflow_id)
    assert exported.info.status == "FINISHED"
    assert exported.info.run_name == run.info.name
    assert exported.data.params == {"lr": "0.1"}
    assert exported.data.tags["kilowatt.run_id"] == run.id
    history = client.get_metric_history(mlflow_id, "loss")
    assert [(m.step, m.value) for m in history] == [
        (s, pytest.approx(1 / (s + 1))) for s in range(5)
    ]
    assert exported.data.metrics["kilowatt.energy_j"] == pytest.approx(3600.0)
    assert [a.path for a in client.list_artifacts(mlflow_id)] == ["model.pt"]
    assert client.get_experiment(exported.info.experiment_id).name == "exp"
