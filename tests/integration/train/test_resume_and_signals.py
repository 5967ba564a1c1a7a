"""Acceptance: SIGKILL at a random step and SIGTERM, then resume, end bit-identical."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from kilowatt.cli.main import main
from kilowatt.train import EXIT_PREEMPTED, CheckpointWarning

REPO = Path(__file__).resolve().parents[3]
STEPS = 600


def _spec(tmp: Path, name: str) -> Path:
    spec = {
        "name": name,
        "model": "examples.train.tiny:make_model",
        "optimizer": "examples.train.tiny:make_optimizer",
        "scheduler": "examples.train.tiny:make_scheduler",
        "dataset": "examples.train.tiny:make_dataset",
        "loss": "examples.train.tiny:loss_fn",
        "steps": STEPS,
        "batch_size": 16,
        "seed": 7,
        "log_every": 50,
        "checkpoint": {"url": str(tmp / name), "every": "10", "keep_last": 2},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _final_weights(folder: Path) -> dict[str, torch.Tensor]:
    state = torch.load(folder / f"step-{STEPS:09d}" / "state.pt", weights_only=False)
    return state["model"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    tmp = tmp_path_factory.mktemp("reference")
    assert main(["train", str(_spec(tmp, "ref")), "--no-track", "--no-progress"]) == 0
    return _final_weights(tmp / "ref")


def _start(spec: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "kilowatt.cli.main", "train", str(spec)]
    return subprocess.Popen(
        [*command, "--no-track", "--no-progress"],
        cwd=REPO,  # the spec names examples.* modules, importable from the repository root
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _wait_for_checkpoint(folder: Path, step: int, process: subprocess.Popen[bytes]) -> int:
    """Block until a complete checkpoint at or past ``step`` exists; return its step."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read().decode()  # type: ignore[union-attr]
        done = [
            int(p.name.split("-")[1])
            for p in folder.glob("step-*")
            if (p / "manifest-rank-0.json").exists()
        ]
        if done and max(done) >= step:
            return max(done)
        time.sleep(0.005)
    raise AssertionError(f"no checkpoint reached step {step} in time")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    if process.stdout is not None:
        process.stdout.close()


def _resume(spec: Path) -> None:
    with warnings.catch_warnings():
        # A checkpoint cut short by the kill is expected; it is skipped with a warning.
        warnings.simplefilter("ignore", CheckpointWarning)
        rc = main(["train", str(spec), "--resume", "auto", "--no-track", "--no-progress"])
    assert rc == 0


def _assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


@pytest.mark.slow
def test_sigkill_at_a_random_step_then_resume_is_bit_identical(
    tmp_path: Path, reference: dict[str, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    spec = _spec(tmp_path, "killed")
    kill_after = random.randint(20, 200)
    process = _start(spec)
    try:
        reached = _wait_for_checkpoint(tmp_path / "killed", kill_after, process)
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
    finally:
        _stop(process)
    assert process.returncode == -signal.SIGKILL
    assert reached < STEPS, "the run finished before it could be killed"
    _resume(spec)
    _assert_identical(reference, _final_weights(tmp_path / "killed"))


@pytest.mark.slow
def test_sigterm_checkpoints_exits_75_and_resumes_identically(
    tmp_path: Path, reference: dict[str, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    spec = _spec(tmp_path, "preempted")
    process = _start(spec)
    try:
        _wait_for_checkpoint(tmp_path / "preempted", 30, process)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=120)
    finally:
        _stop(process)
    assert process.returncode == EXIT_PREEMPTED == 75
    assert b"preempted: checkpointed; rerun with --resume auto" in output
    _resume(spec)
    _assert_identical(reference, _final_weights(tmp_path / "preempted"))
