"""SIGKILL a training job mid-epoch, resume it: it trains on exactly one epoch of samples."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kilowatt.data import Loader, Storage, create_dataset

JOB = Path(__file__).with_name("data_resume_job.py")
ROWS = 240  # as in the job


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[3] / "src")}
    return subprocess.run(
        [sys.executable, str(JOB), *args], env=env, capture_output=True, text=True, timeout=240
    )


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_trains_on_exactly_one_epoch(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path / "data"))
    rng = np.random.default_rng(0)
    arrays = {"id": np.arange(ROWS), "x": rng.random((ROWS, 2), dtype=np.float32)}
    create_dataset(arrays, "toy", "v1", storage, shard_bytes=512)
    # One epoch in batches of 8 over 2 workers (each ends with its own partial batch).
    steps = len(list(Loader("toy:v1", storage, batch_size=8, num_workers=2)))
    args = [storage.root, str(tmp_path / "ckpt"), str(tmp_path / "out.json"), str(steps)]

    killed = _run([*args, str(steps // 2)])
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (tmp_path / "out.json").exists()

    resumed = _run(args)
    assert resumed.returncode == 0, resumed.stderr
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["start"] == steps // 2 - 1  # the last checkpoint before the kill
    assert out["seen"] == [1] * ROWS  # every sample once: none twice, none lost
