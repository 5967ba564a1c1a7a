"""`kilowatt data ...` and `kilowatt train` with `data:` driven through the CLI in-process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kilowatt.cli.main import main
from kilowatt.spec import Settings
from kilowatt.store import open_store

pytestmark = pytest.mark.e2e

ROWS = 256


def _npz(path: Path, shift: float = 0.0, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    inputs = rng.normal(shift, 1.0, (ROWS, 8)).astype(np.float32)
    np.savez(path, inputs=inputs, targets=inputs.sum(axis=1, keepdims=True))
    return path


def _create_reg_v1(tmp_path: Path) -> int:
    """``kilowatt data create`` of the test arrays as ``reg:v1`` in small shards."""
    source = str(_npz(tmp_path / "a.npz"))
    args = ["--name", "reg", "--version", "v1", "--shard-mb", "0.004"]
    return main(["data", "create", source, *args])


def test_create_list_show_verify_diff_delete(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _create_reg_v1(tmp_path) == 0
    out = capsys.readouterr().out
    assert f"data set reg:v1: {ROWS} rows" in out
    with open_store(Settings.from_env()) as store:
        recorded = store.get_dataset("reg", "v1")
    assert recorded.num_rows == ROWS
    assert "fixed_shape_tensor" in recorded.schema["inputs"]
    assert recorded.source_url.endswith("/data/reg/v1") and len(recorded.fingerprint) == 64

    assert (
        main(
            [
                "data",
                "create",
                str(_npz(tmp_path / "b.npz", shift=2.0)),
                "--name",
                "reg",
                "--version",
                "v2",
            ]
        )
        == 0
    )
    assert main(["data", "list"]) == 0
    listing = capsys.readouterr().out
    assert "reg" in listing and "v1" in listing and "v2" in listing
    assert main(["data", "show", "reg:v1"]) == 0
    assert "inputs" in capsys.readouterr().out
    assert main(["data", "diff", "reg:v1", "reg:v2", "--json"]) == 0
    diff = json.loads(capsys.readouterr().out)
    assert diff["shifted"] == ["inputs", "targets"] and diff["added"] == {}

    assert main(["data", "verify", "reg:v1"]) == 0
    assert "all" in capsys.readouterr().out
    shards = sorted((Settings.from_env().home / "data" / "reg" / "v1" / "shards").iterdir())
    shards[1].write_bytes(shards[1].read_bytes()[:-10])
    assert main(["data", "verify", "reg:v1"]) == 1
    assert f"{shards[1].name}: truncated" in capsys.readouterr().err

    assert main(["data", "delete", "reg:v1"]) == 0
    assert main(["data", "show", "reg:v1"]) == 1
    assert "no data set version" in capsys.readouterr().err


def test_changed_content_under_a_version_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["data", "create", str(_npz(tmp_path / "a.npz")), "--name", "reg", "--version", "v1"])
        == 0
    )
    rc = main(
        [
            "data",
            "create",
            str(_npz(tmp_path / "b.npz", seed=1)),
            "--name",
            "reg",
            "--version",
            "v1",
        ]
    )
    assert rc == 1
    assert "already holds other content" in capsys.readouterr().err


def test_train_reads_a_data_set_and_records_the_lineage_edge(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # examples.* importable
    assert _create_reg_v1(tmp_path) == 0
    spec = tmp_path / "train.yaml"
    spec.write_text(
        "name: reg-from-data\n"
        "model: examples.train.tiny:make_model\n"
        "loss: examples.train.tiny:loss_fn\n"
        "data: {dataset: 'reg:v1', inputs: inputs, targets: targets, checks: {min_rows: 100}}\n"
        f"steps: {2 * ROWS // 16}\nbatch_size: 16\nprogress: false\n"  # two whole epochs
    )
    assert main(["train", str(spec)]) == 0
    with open_store(Settings.from_env()) as store:
        dataset = store.get_dataset("reg", "v1")
        graph = store.lineage_of(("dataset", str(dataset.id)))
        runs = [n for n in graph.children(("dataset", str(dataset.id))) if n.kind == "run"]
        assert len(runs) == 1
        metrics = store.latest_metrics(runs[0].id)
    # The run ends on the loader's totals: epoch 1 reads every shard from where the data
    # set lives (in place: it is local), epoch 2 every shard from the memory tier.
    shards = Settings.from_env().home / "data" / "reg" / "v1" / "shards"
    shard_bytes = sum(p.stat().st_size for p in shards.iterdir())
    assert metrics["data_remote_bytes"] == shard_bytes
    assert metrics["data_memory_bytes"] == shard_bytes
    assert metrics["data_memory_hit_rate"] == 0.5 and metrics["data_disk_hit_rate"] == 0.0
    assert metrics["data_wait_s"] > 0 and metrics["data_fetch_latency_s"] > 0

    spec.write_text(spec.read_text().replace("min_rows: 100", "min_rows: 1000"))
    assert main(["train", str(spec)]) == 1
    assert f"{ROWS} rows < min_rows 1000" in capsys.readouterr().err
