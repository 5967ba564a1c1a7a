"""``kilowatt submit``, ``kilowatt worker`` and ``kilowatt jobs`` driven in-process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kilowatt.cli.main import main


def _spec(folder: Path, name: str, command: str, **backend: object) -> Path:
    path = folder / f"{name}.yaml"
    lines = [f"name: {name}", f"command: {json.dumps(command)}"]
    if backend:
        lines.append(f"backend: {json.dumps(backend)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_submit_run_list_logs_and_cancel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    hello = _spec(tmp_path, "hello", "sh -c 'echo hello from job $KILOWATT_JOB_ID'")
    never = _spec(tmp_path, "never", "sleep 100")
    assert main(["submit", str(hello)]) == 0
    assert capsys.readouterr().out == "submitted command job 'hello' as 1 (local)\n"
    assert main(["submit", str(never), "--priority", "3"]) == 0
    capsys.readouterr()

    # a queued job is cancelled at once, before any worker sees it
    assert main(["jobs", "cancel", "2"]) == 0
    assert capsys.readouterr().out == "job 2: cancelled\n"

    assert main(["worker", "--devices", "", "--until-idle", "--poll-interval-s", "0.05"]) == 0
    capsys.readouterr()
    assert main(["jobs", "list", "--json"]) == 0
    jobs = {job["id"]: job for job in json.loads(capsys.readouterr().out)}
    assert (jobs[1]["status"], jobs[1]["exit_code"], jobs[1]["attempts"]) == ("succeeded", 0, 1)
    assert (jobs[2]["status"], jobs[2]["priority"], jobs[2]["attempts"]) == ("cancelled", 3, 0)

    assert main(["jobs", "logs", "1"]) == 0
    assert capsys.readouterr().out == "hello from job 1\n"
    monkeypatch.setenv("COLUMNS", "200")  # one table row per job, unwrapped
    assert main(["jobs", "list"]) == 0
    table = capsys.readouterr().out
    assert "hello" in table and "succeeded" in table


def test_unknown_job_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["jobs", "logs", "99"]) == 1
    assert "no job 99" in capsys.readouterr().err


def test_bad_spec_names_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = _spec(tmp_path, "bad", "true", max_runtime_s=-1)
    assert main(["submit", str(bad)]) == 1
    assert "max_runtime_s" in capsys.readouterr().err
