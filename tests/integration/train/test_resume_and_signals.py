"""Acceptance: SIGKILL at a random step and SIGTERM, then resume, end bit-identical.

Equal final weights alone would not tell a resume from a restart (a seeded run from step 0
reproduces them too), so each run keeps an event log (``event_log``, one line per step) and
the tests check that the second process started at the newest complete checkpoint written
before the stop, and that it never repeated a step before that checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

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
        "log_every": 1,
        "event_log": str(tmp / f"{name}-events.jsonl"),
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


def _complete_checkpoints(folder: Path) -> list[int]:
    """Steps whose checkpoint is complete (its manifest, written last, exists)."""
    return sorted(
        int(p.name.split("-")[1])
        for p in folder.glob("step-*")
        if (p / "manifest-rank-0.json").exists()
    )


def _wait_for_checkpoint(folder: Path, step: int, process: subprocess.Popen[bytes]) -> int:
    """Block until a complete checkpoint at or past ``step`` exists; return its step."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read().decode()  # type: ignore[union-attr]
        done = _complete_checkpoints(folder)
        if done and done[-1] >= step:
            return done[-1]
        time.sleep(0.005)
    raise AssertionError(f"no checkpoint reached step {step} in time")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    if process.stdout is not None:
        process.stdout.close()


def _resume(spec: Path, folder: Path) -> None:
    """Resume; only a checkpoint the kill cut short may be skipped, and with a warning."""
    complete = _complete_checkpoints(folder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CheckpointWarning)
        rc = main(["train", str(spec), "--resume", "auto", "--no-track", "--no-progress"])
    assert rc == 0
    for warning in caught:
        assert issubclass(warning.category, CheckpointWarning), str(warning.message)
        partial = int(str(warning.message).split("step-")[1][:9])
        assert partial > complete[-1], f"a complete checkpoint was refused: {warning.message}"


def _events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _assert_resumed_not_restarted(events: list[dict[str, Any]], newest_before_stop: int) -> None:
    """Two processes: the first ran steps 1..k; the second started at the newest complete
    checkpoint (never 0), ran each step after it once, and none before it."""
    starts = [e for e in events if e["event"] == "fit_start"]
    assert [e["start_step"] for e in starts] == [0, newest_before_stop]
    assert newest_before_stop > 0
    first, second = (e["pid"] for e in starts)
    assert first != second
    steps = {pid: [e["step"] for e in events if e["event"] == "step" and e["pid"] == pid]
             for pid in (first, second)}  # fmt: skip
    assert steps[first] == list(range(1, len(steps[first]) + 1))
    assert steps[first][-1] >= newest_before_stop  # the first process wrote that checkpoint
    assert steps[second] == list(range(newest_before_stop + 1, STEPS + 1))
    ends = [e for e in events if e["event"] == "fit_end"]
    assert ends[-1]["pid"] == second
    assert (ends[-1]["start_step"], ends[-1]["steps"]) == (newest_before_stop, STEPS)


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
    newest = _complete_checkpoints(tmp_path / "killed")[-1]
    _resume(spec, tmp_path / "killed")
    _assert_identical(reference, _final_weights(tmp_path / "killed"))
    _assert_resumed_not_restarted(_events(tmp_path / "killed-events.jsonl"), newest)


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
    events = _events(tmp_path / "preempted-events.jsonl")
    stopped_at = next(e for e in events if e["event"] == "fit_end")
    assert stopped_at["preempted"] is True
    # SIGTERM writes a checkpoint of the very step it stopped at
    newest = _complete_checkpoints(tmp_path / "preempted")[-1]
    assert newest == stopped_at["steps"] > 30
    _resume(spec, tmp_path / "preempted")
    _assert_identical(reference, _final_weights(tmp_path / "preempted"))
    _assert_resumed_not_restarted(_events(tmp_path / "preempted-events.jsonl"), newest)
