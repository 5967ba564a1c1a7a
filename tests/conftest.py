"""Shared fixtures: every test runs with its own KILOWATT_HOME and no stray settings."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

_KILOWATT_VARS = (
    "KILOWATT_HOME",
    "KILOWATT_STORE_URL",
    "KILOWATT_ARTIFACTS_URL",
    "KILOWATT_USER",
    "KILOWATT_TOKEN",
    "KILOWATT_AUDIT_KEY",
    "KILOWATT_AUDIT_WITNESS_URL",
    "KILOWATT_AUDIT_WITNESS_EVERY",
    "KILOWATT_DATA_URL",
    "KILOWATT_S3_ENDPOINT_URL",
)


@pytest.fixture(autouse=True)
def clean_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point KILOWATT_HOME at a fresh folder and clear every other kilowatt variable."""
    for name in _KILOWATT_VARS:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "kilowatt-home"
    monkeypatch.setenv("KILOWATT_HOME", str(home))
    monkeypatch.setenv("KILOWATT_USER", "tester")
    return home


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for the test: its matrices are tiny, and a second thread only adds
    synchronisation on a shared machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Under CI=true these markers name tests that must run: a skip of one fails the run, so a
# green CI means PostgreSQL and the browser were really exercised.
MUST_RUN_IN_CI = ("postgres", "browser")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report: pytest.TestReport = yield
    must_run = [name for name in MUST_RUN_IN_CI if item.get_closest_marker(name)]
    xfailed = hasattr(report, "wasxfail")
    if os.environ.get("CI") == "true" and must_run and report.skipped and not xfailed:
        skip = report.longrepr
        reason = str(skip[2] if isinstance(skip, tuple) else skip).removeprefix("Skipped: ")
        report.outcome = "failed"
        report.longrepr = f"a {'/'.join(must_run)} test skipped under CI=true: {reason}"
    return report


@pytest.fixture
def optimized_digits(tmp_path: Path) -> None:
    """This test's store holds digits:1 in production and an optimize run of it that made
    digits:2 (a good variant, onnx-int8-static) and digits:3 (a pruned, worse one), with the
    run's report: what the promotion gate and the model page read."""
    import json

    from kilowatt.optimize import Candidate, Figures, OptimizeReport
    from kilowatt.store import open_store
    from kilowatt.store.gates import REPORT_ARTIFACT

    def row(name: str, version: str, metric: float, joules: float) -> Candidate:
        figures = Figures(1 << 20, 1e-4, 2e-4, 1e4, 32, joules, joules * 3, "estimated-cpu-time")
        return Candidate(name, "t", {}, 1, "measured", metric=metric, figures=figures,
                         version=version, pareto=True, within_budget=metric > 0.9)  # fmt: skip

    folder = tmp_path / "optimized-digits"
    folder.mkdir()
    with open_store() as store:
        train = store.create_run("train")
        (folder / "m.pt").write_bytes(b"m")
        store.log_artifact(train.id, folder / "m.pt")
        parent = store.register_model("digits", run_id=train.id, artifact="m.pt",
                                      aliases=["production"])  # fmt: skip
        run = store.create_run("optimize")
        store.record_optimization(parent, run.id)
        for name in ("a.onnx", "b.pt"):
            (folder / name).write_bytes(name.encode())
            store.log_artifact(run.id, folder / name)
            store.register_model("digits", run_id=run.id, artifact=name,
                                 signature={"parent": "digits:1", "transform": name})  # fmt: skip
        rows = [row("fp32-eager", "digits:1", 0.96, 0.4),
                row("onnx-int8-static", "digits:2", 0.959, 0.1),
                row("pruned-l1-0.95", "digits:3", 0.5, 0.05)]  # fmt: skip
        report = OptimizeReport(rows, "accuracy", True, "energy", 0.005, None)
        (folder / REPORT_ARTIFACT).write_text(json.dumps(report.as_dict()))
        store.log_artifact(run.id, folder / REPORT_ARTIFACT)
