"""The run API's buffering and references, and what a run records about its environment."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import kilowatt
from kilowatt.errors import SpecError
from kilowatt.store import open_store
from kilowatt.store.environment import capture_environment, git_state
from kilowatt.store.registry import parse_model_ref

_EXIT_WITHOUT_END = """
import kilowatt
run = kilowatt.start_run(project="atexit", flush_interval_s=3600)
run.log_metrics({"loss": 0.5}, step=7)
print(run.id)
"""


def test_points_buffered_at_interpreter_exit_are_written() -> None:
    # the flush interval is an hour, and the run is never ended: only atexit can save it
    done = subprocess.run(
        [sys.executable, "-c", _EXIT_WITHOUT_END], capture_output=True, text=True, check=True
    )
    with open_store() as store:
        run = store.get_run(done.stdout.strip())
        assert run.status == "finished"
        assert store.metric_history(run.id, "loss").step.tolist() == [7]


def test_a_run_left_open_by_an_uncaught_exception_ends_failed() -> None:
    script = _EXIT_WITHOUT_END + "raise SystemError('crash')\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 1 and "SystemError: crash" in done.stderr
    with open_store() as store:
        run = store.get_run(done.stdout.strip())
        assert run.status == "failed"
        assert store.metric_history(run.id, "loss").value.tolist() == [0.5]


def test_logging_after_the_end_is_refused() -> None:
    with kilowatt.start_run(project="p") as run:
        pass
    with pytest.raises(SpecError, match=f"run {run.id} has ended"):
        run.log_metrics({"loss": 1.0})


def test_start_run_uses_kilowatt_home_and_the_settings_user(clean_environment: Path) -> None:
    with kilowatt.start_run(project="home") as run:
        run.log_metric("loss", 1.0)
    assert (clean_environment / "kilowatt.db").is_file()
    with open_store() as store:
        assert store.get_run(run.id).user == "tester"
        assert store.list_audit()[0].actor == "tester"


def test_flush_interval_must_be_positive() -> None:
    with pytest.raises(SpecError, match="flush_interval_s=0 must be positive"):
        kilowatt.start_run(project="p", flush_interval_s=0)


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("clf", ("clf", None, None)),  # bare name: the latest version
        ("clf:3", ("clf", 3, None)),  # a version number
        ("clf@production", ("clf", None, "production")),  # an alias
        ("clf:staging", ("clf", None, "staging")),  # an alias after a colon
        ("org/clf:2", ("org/clf", 2, None)),  # namespaced names keep their slash
    ],
)
def test_model_references(ref: str, expected: tuple[object, ...]) -> None:
    assert parse_model_ref(ref) == expected


def test_an_empty_model_reference_is_refused() -> None:
    with pytest.raises(SpecError, match="model reference ':1' is empty"):
        parse_model_ref(":1")


def test_outside_git_there_is_no_commit(tmp_path: Path) -> None:
    assert git_state(tmp_path) == (None, None)
    environment = capture_environment(tmp_path)
    assert environment["git_commit"] is None
    assert "torch" not in sys.modules or environment["torch_version"] is not None


def test_importing_the_store_does_not_import_torch() -> None:
    modules = "kilowatt.store, kilowatt.cli.runs_cmd, kilowatt.cli.models_cmd"
    code = f"import sys, {modules}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_an_in_memory_store_is_shared_with_the_flusher_thread() -> None:
    with open_store(url="sqlite://", artifacts_url="memory://kw-test") as store:
        with kilowatt.start_run(project="mem", store=store, flush_interval_s=0.01) as run:
            for step in range(1000):
                run.log_metric("loss", step / 1000)
        assert len(store.metric_history(run.id, "loss")) == 1000
        assert store.get_run(run.id).status == "finished"
