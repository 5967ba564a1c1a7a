"""`kilowatt serve REF`: a missing file is reported as a missing file, not as a model name."""

from __future__ import annotations

from pathlib import Path

import pytest

from kilowatt.cli.main import main


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        # an absolute path cannot be a model name: only the file is missing
        ("/nonexistent.pt", "/nonexistent.pt: no such file; check the path"),
        ("./models/mlp.pt", "./models/mlp.pt: no such file; check the path"),
        # a bare file name could also be a registered model: neither exists
        ("mlp.pt", "mlp.pt: no such file, and no model 'mlp.pt' is registered"),
        ("models/mlp.pt", "models/mlp.pt: no such file, and no model 'models/mlp.pt' is"),
        # a plain name is a registry reference
        ("ghost", "no model 'ghost' is registered"),
    ],
)
def test_a_missing_model_says_what_is_missing(
    ref: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    assert main(["serve", ref]) == 1
    err = capsys.readouterr().err
    assert message in " ".join(err.split())  # the console may wrap the line
    if ref.startswith(("/", "./")):
        assert "registered" not in err
