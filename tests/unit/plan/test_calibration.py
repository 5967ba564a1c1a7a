"""Calibration storage and the single-workload prediction the trainer compares against."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from kilowatt.errors import SpecError
from kilowatt.plan import (
    Calibration,
    load_calibration,
    predict_training,
    record_measurement,
    save_calibration,
)


def test_missing_file_is_an_empty_calibration(tmp_path: Path) -> None:
    assert load_calibration(tmp_path / "none.json") == Calibration()


def test_measurements_average_and_persist(tmp_path: Path) -> None:
    path = tmp_path / "calibration.json"
    record_measurement(path, "cpu", "cnn", mfu=0.2)
    cal = record_measurement(path, "cpu", "cnn", achieved_flops=4e10, peak_flops=1e11)
    assert cal.mfu("cpu", "cnn") == pytest.approx(0.3)  # mean of 0.2 and 0.4
    stored = json.loads(path.read_text())
    assert stored["schema"] == 1
    assert stored["entries"][0]["samples"] == 2
    assert load_calibration(path).mfu("cpu", "cnn") == pytest.approx(0.3)
    assert load_calibration(path).mfu("cpu", "transformer") is None


def test_serving_prefill_fractions_average_apart_and_persist(tmp_path: Path) -> None:
    path = tmp_path / "calibration.json"
    record_measurement(path, "cpu", "transformer-serving", mfu=0.01, prefill_mfu=0.1)
    record_measurement(path, "cpu", "transformer-serving", mfu=0.03)  # no prefill measured
    cal = record_measurement(path, "cpu", "transformer-serving", mfu=0.02, prefill_mfu=0.2)
    entry = cal.entry("cpu", "transformer-serving")
    assert entry is not None
    assert (entry.mfu, entry.samples) == (pytest.approx(0.02), 3)
    assert (entry.prefill_mfu, entry.prefill_samples) == (pytest.approx(0.15), 2)
    assert load_calibration(path).prefill_mfu("cpu", "transformer-serving") == pytest.approx(0.15)
    assert cal.prefill_mfu("cpu", "transformer") is None


def test_a_file_written_before_prefill_rates_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "calibration.json"
    entry = {"accelerator": "cpu", "model_class": "transformer-serving", "mfu": 0.02,
             "samples": 1, "updated": "2026-01-01T00:00:00+00:00"}  # fmt: skip
    path.write_text(json.dumps({"schema": 1, "entries": [entry]}))
    cal = load_calibration(path)
    assert cal.mfu("cpu", "transformer-serving") == pytest.approx(0.02)
    assert cal.prefill_mfu("cpu", "transformer-serving") is None


def test_an_impossible_prefill_fraction_is_refused() -> None:
    with pytest.raises(SpecError, match="measured prefill MFU must be in"):
        Calibration().with_measurement("cpu", "transformer-serving", 0.1, prefill_mfu=2.0)


def test_default_path_is_in_kilowatt_home(clean_environment: Path) -> None:
    record_measurement(None, "a100-80gb", "transformer", mfu=0.45)
    assert load_calibration(clean_environment / "calibration.json").mfu(
        "a100-80gb", "transformer"
    ) == pytest.approx(0.45)


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    cal = Calibration().with_measurement("cpu", "cnn", 0.1, now=dt.datetime(2026, 1, 1))
    save_calibration(tmp_path / "c.json", cal)
    assert [p.name for p in tmp_path.iterdir()] == ["c.json"]
    assert load_calibration(tmp_path / "c.json") == cal


@pytest.mark.parametrize("bad", [0.0, 1.5, -0.1])
def test_impossible_mfu_is_refused(bad: float) -> None:
    with pytest.raises(SpecError, match="measured MFU must be in"):
        Calibration().with_measurement("cpu", "cnn", bad)


def test_corrupt_file_names_itself(tmp_path: Path) -> None:
    path = tmp_path / "calibration.json"
    path.write_text("{not json")
    with pytest.raises(SpecError, match=r"calibration\.json: not a valid calibration file"):
        load_calibration(path)


def test_predict_training_on_the_local_cpu() -> None:
    # 1e15 FLOPs on 8 cores of 0.1 TFLOP/s at MFU 0.25: 5000 s; 8 x 10 W busy = 80 W;
    # local region: PUE 1.0 and 480 g/kWh.
    p = predict_training(1e15, "cpu", count=8, mfu=0.25, precision="fp32")
    assert p.time_s == pytest.approx(5000.0)
    assert p.power_w == pytest.approx(80.0)
    assert p.energy_j == pytest.approx(80.0 * 5000.0)
    assert p.carbon_gco2e == pytest.approx(80.0 * 5000.0 / 3.6e6 * 480.0)
    assert p.cost_usd == 0.0
    assert p.method == "planned"


def test_predict_training_uses_calibration_then_default() -> None:
    cal = Calibration().with_measurement("a100-80gb", "transformer", 0.5)
    measured = predict_training(3.12e17, "a100-80gb", calibration=cal, price_usd_per_hour=4.0)
    assert (measured.mfu_source, measured.time_s) == ("calibration", pytest.approx(2000.0))
    assert measured.cost_usd == pytest.approx(4.0 * 2000.0 / 3600.0)
    default = predict_training(3.12e17, "a100-80gb")
    # the A100 default is the fit on published runs (catalog/data/published_runs.yaml)
    assert (default.mfu_source, default.mfu) == ("catalog default", 0.60)


def test_predict_training_refuses_nonsense() -> None:
    with pytest.raises(SpecError, match="count >= 1"):
        predict_training(1e12, "cpu", count=0)
