"""Under CI=true a skipped PostgreSQL or browser test fails the run (tests/conftest.py's hook)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SUITE = """
import pytest

@pytest.mark.postgres
def test_needs_postgres():
    pytest.skip("PostgreSQL is not reachable")

@pytest.mark.browser
def test_needs_browser():
    pytest.skip("needs chromium")

def test_optional():
    pytest.skip("an ordinary skip")

@pytest.mark.postgres
@pytest.mark.xfail(reason="a known failure", strict=True)
def test_known_failure():
    raise AssertionError
"""


def _run_suite(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text((Path(__file__).parents[2] / "conftest.py").read_text())
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n  postgres\n  browser\n")
    (tmp_path / "test_suite.py").write_text(SUITE)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfs", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_ci_turns_postgres_and_browser_skips_into_failures(tmp_path: Path) -> None:
    result = _run_suite(tmp_path, ci="true")
    assert result.returncode == 1, result.stdout
    assert "2 failed, 1 skipped, 1 xfailed" in result.stdout
    assert "a postgres test skipped under CI=true: PostgreSQL is not reachable" in result.stdout
    assert "a browser test skipped under CI=true: needs chromium" in result.stdout


@pytest.mark.parametrize("ci", [None, "false"])
def test_outside_ci_they_skip_with_the_reason(tmp_path: Path, ci: str | None) -> None:
    result = _run_suite(tmp_path, ci=ci)
    assert result.returncode == 0, result.stdout
    assert "3 skipped, 1 xfailed" in result.stdout
    assert "PostgreSQL is not reachable" in result.stdout and "needs chromium" in result.stdout
