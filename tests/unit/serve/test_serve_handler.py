"""Loading models from TorchScript, torch.export, state dicts and handler classes."""

from __future__ import annotations

import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from kilowatt.errors import ServeError, SpecError
from kilowatt.serve.engine import ModelEngine
from kilowatt.serve.handler import load_handler
from kilowatt.spec import BatchingSpec, ModelSpec

FACTORY_MODULE = textwrap.dedent(
    """
    import numpy as np
    import torch

    def build():
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)
        )

    class Doubler:
        input_shape = (4,)

        def load(self):
            self.factor = 2.0

        def predict(self, batch):
            return batch * self.factor
    """
)


@pytest.fixture
def factory_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "kw_test_models.py").write_text(FACTORY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "kw_test_models"


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)
    ).eval()


def save_torchscript(module: torch.nn.Module, path: Path) -> None:
    with warnings.catch_warnings():  # deprecated upstream, still a format users ship
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(module).save(str(path))


def _expected(module: torch.nn.Module, batch: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return module(torch.from_numpy(batch)).numpy()


BATCH = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)


def _loaded(spec: ModelSpec) -> ModelEngine:
    engine = ModelEngine(
        spec.name, spec.version, load_handler(spec), BatchingSpec(max_batch_size=4)
    )
    engine.load()
    return engine


def test_torchscript_file_is_recognised_and_matches_the_model(tmp_path: Path) -> None:
    module = _mlp()
    path = tmp_path / "mlp.pt"
    save_torchscript(module, path)
    engine = _loaded(ModelSpec(name="mlp", source=str(path)))
    assert engine.input_shape == (8,)  # read from the first linear layer
    assert [(o.name, o.datatype, o.shape) for o in engine.outputs] == [("output0", "FP32", (-1, 3))]
    out = engine.handler.predict(BATCH)
    np.testing.assert_allclose(out, _expected(module, BATCH), atol=1e-4)
    engine.close()


def test_torch_export_archive_takes_its_input_shape_from_the_program(tmp_path: Path) -> None:
    module = _mlp()
    batch_dim = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(
        module, (torch.zeros(2, 8),), dynamic_shapes={"input": {0: batch_dim}}
    )
    path = tmp_path / "mlp.pt2"
    torch.export.save(program, str(path))
    engine = _loaded(ModelSpec(name="mlp", source=str(path)))
    assert engine.input_shape == (8,)
    np.testing.assert_allclose(engine.handler.predict(BATCH), _expected(module, BATCH), atol=1e-4)
    engine.close()


def test_state_dict_with_factory(tmp_path: Path, factory_module: str) -> None:
    path = tmp_path / "weights.pt"
    torch.save(_mlp().state_dict(), str(path))
    spec = ModelSpec(
        name="mlp", source=str(path), format="state_dict", factory=f"{factory_module}:build"
    )
    engine = _loaded(spec)
    np.testing.assert_allclose(engine.handler.predict(BATCH), _expected(_mlp(), BATCH), atol=1e-4)
    engine.close()


def test_handler_class_by_reference(factory_module: str) -> None:
    engine = _loaded(ModelSpec(name="d", source=f"{factory_module}:Doubler"))
    assert engine.input_shape == (4,)
    assert engine.handler.predict(np.ones((1, 4), dtype=np.float32)).tolist() == [[2.0] * 4]
    engine.close()


def test_state_dict_without_format_hint_explains_what_to_pass(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(_mlp().state_dict(), str(path))
    with pytest.raises(ServeError, match="pass format 'state_dict' with factory"):
        load_handler(ModelSpec(name="mlp", source=str(path)))


def test_missing_file_and_bad_factory_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"model file .*nope\.pt' does not exist"):
        load_handler(ModelSpec(name="m", source=str(tmp_path / "nope.pt")))
    with pytest.raises(SpecError, match="cannot import 'no_such_module_kw'"):
        load_handler(ModelSpec(name="m", source="no_such_module_kw:Thing", format="handler"))
    with pytest.raises(ValueError, match="a state dict needs factory"):
        ModelSpec(name="m", source="w.pt", format="state_dict")
