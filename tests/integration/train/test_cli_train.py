"""``kilowatt train`` records the run with the planner's prediction beside the measurement;
``kilowatt profile`` stores a calibration; a running job serves Prometheus metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from examples.train import tiny
from kilowatt.cli.main import main
from kilowatt.spec import Settings
from kilowatt.store import open_store
from kilowatt.train import Callback, StepEvent, Trainer
from kilowatt.train.metrics import PrometheusCallback

REPO = Path(__file__).resolve().parents[3]


def _spec(tmp_path: Path, **changes: Any) -> Path:
    spec = yaml.safe_load((REPO / "examples" / "train" / "tiny.yaml").read_text())
    spec.update({"steps": 20, "checkpoint": {"url": str(tmp_path / "ckpt"), "every": "10"}})
    spec.update(changes)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_train_records_metrics_usage_and_prediction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(REPO)
    assert main(["train", str(_spec(tmp_path)), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "20 (from 0)" in out and "estimated-cpu-time" in out
    with open_store(Settings.from_env()) as store:
        (run,) = store.list_runs(project="examples")
        assert run.status == "finished" and run.name == "tiny-regression"
        assert run.usage_method == "estimated-cpu-time"
        assert run.energy_j is not None and run.energy_j > 0
        assert run.carbon_gco2e is not None and run.cost_usd is not None
        metrics = store.latest_metrics(run.id)
    assert {"loss", "samples_per_s", "step_time_s", "eval_loss", "fit_energy_j"} <= set(metrics)
    # the planner's prediction sits beside the measurement, with their ratio
    assert metrics["predicted_time_s"] > 0
    assert metrics["time_s_ratio"] == pytest.approx(
        metrics["measured_time_s"] / metrics["predicted_time_s"]
    )
    assert metrics["fit_flops_per_s"] == pytest.approx(1728 * metrics["fit_samples_per_s"])


def test_bad_entry_point_is_an_error_without_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(REPO)
    spec = _spec(tmp_path, loss="examples.train.tiny:make_dataset")
    assert main(["train", str(spec), "--no-track"]) == 1
    err = capsys.readouterr().err
    assert "loss: examples.train.tiny:make_dataset() -> " in err
    assert "cannot be called as loss(outputs, targets)" in err
    assert "Traceback" not in err


def test_profile_stores_a_calibration_the_planner_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(REPO)
    spec = _spec(tmp_path, model_class="mlp")
    assert main(["profile", str(spec), "--steps", "6"]) == 0
    out = capsys.readouterr().out
    assert "median of 5 steps" in out and "fraction of peak" in out
    calibration = json.loads((Settings.from_env().home / "calibration.json").read_text())
    (entry,) = calibration["entries"]
    assert (entry["accelerator"], entry["model_class"], entry["samples"]) == ("cpu", "mlp", 1)
    assert 0 < entry["mfu"] <= 1


class _Scrape(Callback):
    """Reads the job's /metrics endpoint while the job runs."""

    def __init__(self, exporter: PrometheusCallback) -> None:
        self.exporter = exporter
        self.body = ""

    def on_step(self, event: StepEvent) -> None:
        if event.step == 10:
            url = f"http://127.0.0.1:{self.exporter.bound_port}/metrics"
            self.body = httpx.get(url, timeout=30).text


def test_running_job_serves_prometheus_metrics_on_localhost(tmp_path: Path) -> None:
    exporter = PrometheusCallback(port=0)
    scrape = _Scrape(exporter)
    Trainer(
        tiny.make_model,
        train_data=tiny.make_dataset(),
        loss_fn=tiny.loss_fn,
        meter=None,
        progress=False,
        steps=20,
        log_every=5,
        checkpoint={"url": str(tmp_path), "every": "100"},
        callbacks=[exporter, scrape],
    ).fit()
    assert "kilowatt_train_step 10.0" in scrape.body
    assert "kilowatt_train_samples_per_second" in scrape.body
    assert exporter._server is None  # stopped at the end of the fit
