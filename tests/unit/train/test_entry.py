"""Bad specs fail at once, naming the key, the value and the fix."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from kilowatt.errors import SpecError
from kilowatt.spec import TrainSpec, load_spec
from kilowatt.train.entry import build_trainer, resolve_entry_point

GOOD = {
    "name": "tiny",
    "model": "examples.train.tiny:make_model",
    "optimizer": "examples.train.tiny:make_optimizer",
    "dataset": "examples.train.tiny:make_dataset",
    "loss": "examples.train.tiny:loss_fn",
}


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "userjob.py").write_text(
        textwrap.dedent(
            """
            RATE = 0.1

            def model_with_args(width, depth):
                raise AssertionError("never called")

            def loss_one_arg(outputs):
                raise AssertionError("never called")

            def flexible(*args, **kwargs):
                raise AssertionError("never called")
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "userjob"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("model", "no_such_pkg.mod:make", "cannot import module 'no_such_pkg.mod'"),
        ("model", "userjob:missing", "module 'userjob' has no attribute 'missing'"),
        ("optimizer", "userjob:RATE", "userjob:RATE is a float, not a function"),
        # required parameters the loop will not pass
        ("model", "userjob:model_with_args", r"cannot be called as model\(\) -> torch.nn.Module"),
        ("loss", "userjob:loss_one_arg", r"cannot be called as loss\(outputs, targets\)"),
    ],
)
def test_bad_entry_points_are_clear_spec_errors(
    user_module: str, key: str, value: str, message: str
) -> None:
    with pytest.raises(SpecError, match=message):
        resolve_entry_point(key, value)


def test_flexible_signatures_are_accepted(user_module: str) -> None:
    assert callable(resolve_entry_point("training_step", "userjob:flexible"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": "examples.train.tiny.make_model"}, "is not an entry point; write"),
        ({"dataloader": "examples.train.tiny:make_dataloader"}, "exactly one of 'dataset' or"),
        ({"training_step": "examples.train.tiny:training_step"}, "exactly one of 'loss' or"),
        ({"precision": "fp8"}, "precision: Input should be 'fp32', 'bf16-mixed' or"),
        ({"checkpoint": {"every": "10m"}}, "'10m' is not understood; use steps"),
        ({"stepz": 10}, "stepz: unknown key"),
        ({"name": "has space"}, "name: String should match pattern"),
    ],
)
def test_invalid_specs_name_the_field(change: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        load_spec(TrainSpec, {**GOOD, **change})


def test_missing_required_entry_point(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("name: tiny\ndataset: examples.train.tiny:make_dataset\nloss: a.b:c\n")
    with pytest.raises(SpecError, match=r"job.yaml: invalid spec .*\n  - model: Field required"):
        load_spec(TrainSpec, path)


def test_a_good_spec_builds_a_trainer_that_trains(tmp_path: Path) -> None:
    spec = load_spec(
        TrainSpec,
        {**GOOD, "steps": 4, "progress": False, "checkpoint": {"url": str(tmp_path)}},
    )
    result = build_trainer(spec, meter=None).fit()
    assert result.steps == 4 and (tmp_path / "step-000000004").is_dir()
