"""Fixtures of the serving tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from serve_helpers import save_torchscript, small_mlp


@pytest.fixture
def mlp_file(tmp_path: Path) -> Path:
    """A small MLP saved as TorchScript."""
    return save_torchscript(small_mlp(), tmp_path / "mlp.pt")
