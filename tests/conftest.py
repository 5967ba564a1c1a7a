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
