"""Shared fixtures: every test runs with its own KILOWATT_HOME and no stray settings."""

from __future__ import annotations

from pathlib import Path

import pytest

_KILOWATT_VARS = (
    "KILOWATT_HOME",
    "KILOWATT_STORE_URL",
    "KILOWATT_ARTIFACTS_URL",
    "KILOWATT_USER",
    "KILOWATT_TOKEN",
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
