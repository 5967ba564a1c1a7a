"""`kilowatt generate train` and `kilowatt generate serve` through the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from kilowatt.cli.main import main
from kilowatt.serve.generate import SamplingParams, load_runner
from kilowatt.serve.generate.engine import GenerationEngine

pytestmark = pytest.mark.e2e


def test_train_writes_a_servable_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "train", str(tmp_path / "tiny"), "--steps", "2"]) == 0
    assert "kilowatt generate serve" in capsys.readouterr().out
    engine = GenerationEngine(load_runner(tmp_path / "tiny", num_blocks=32, block_size=16))
    engine.start()
    try:
        answer = engine.generate("The grid", SamplingParams(max_tokens=5, temperature=0))
    finally:
        engine.close()
    assert answer.report.completion_tokens == 5


def test_serve_refuses_a_folder_without_a_causal_lm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["generate", "serve", str(tmp_path), "--no-meter"]) == 1
    err = capsys.readouterr().err
    assert "is not a causal language model folder" in err
    assert "kilowatt generate train" in err
