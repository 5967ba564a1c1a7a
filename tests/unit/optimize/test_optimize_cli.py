"""``kilowatt optimize`` on a registered version: prints the variant table, registers the
kept variant with lineage parent -> optimize run -> variant and the transform recorded,
and stores the report the promotion gate reads. With ``--eval dataset:NAME:VERSION`` a
registered data set version is the eval set and the run's recorded input."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from kilowatt.cli.main import main
from kilowatt.data import create_dataset, storage_from_settings
from kilowatt.spec import Settings
from kilowatt.store import open_store


def make_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)).eval()


def eval_set() -> tuple[np.ndarray, np.ndarray]:
    inputs = np.random.default_rng(0).random((32, 8), dtype=np.float32)
    with torch.inference_mode():
        labels = make_mlp()(torch.from_numpy(inputs)).argmax(1).numpy()
    return inputs, labels


@pytest.mark.slow
def test_optimize_registers_the_kept_variant_with_lineage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _register_mlp(tmp_path)
    code = main([
        "optimize", "mlp:1", "--eval", f"{__name__}:eval_set", "--quick", "--threads", "1",
        "--transforms", "onnx,int8-dynamic", "--max-accuracy-drop", "100%",
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "onnx x1" in out and "fp32-eager x1" in out and "chosen:" in out
    with open_store() as store:
        versions = {v.version: v for v in store.list_model_versions("mlp")}
        variants = [v for n, v in versions.items() if n > 1]
        assert variants and all(v.signature["parent"] == "mlp:1" for v in variants)
        assert {v.signature["transform"] for v in variants} <= {
            "torch.onnx.export+onnxruntime", "torch.ao.quantization.quantize_dynamic",
        }  # fmt: skip
        graph = store.lineage_of(variants[0])
        labels = {node.label for node in graph.nodes.values()}
        assert "mlp:1" in labels  # parent -> optimize run -> variant
        report = store.optimize_report(versions[1])
        assert report is not None and report["baseline"] == "fp32-eager x1"
        assert store.version_figures(variants[0]) is not None


def _create_eval_dataset(**columns_as: str) -> None:
    inputs, labels = eval_set()
    names = {"inputs": "x", "targets": "y", **columns_as}
    arrays = {names["inputs"]: inputs, names["targets"]: labels}
    create_dataset(arrays, "mlp-eval", "v1", storage_from_settings(Settings.from_env()))


def _register_mlp(tmp_path: Path) -> None:
    model_file = tmp_path / "mlp.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(make_mlp()).save(str(model_file))
    with open_store() as store:
        run = store.create_run("train")
        store.log_artifact(run.id, model_file)
        store.register_model(
            "mlp", run_id=run.id, artifact="mlp.pt", signature={"input_shape": [8]}
        )


@pytest.mark.slow
def test_optimize_evaluates_on_a_registered_data_set_and_records_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _create_eval_dataset()
    _register_mlp(tmp_path)
    code = main([
        "optimize", "mlp:1", "--eval", "dataset:mlp-eval:v1", "--quick", "--threads", "1",
        "--transforms", "onnx", "--max-accuracy-drop", "100%",
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "onnx x1" in out and "chosen:" in out
    with open_store() as store:
        variant = max(store.list_model_versions("mlp"), key=lambda v: v.version)
        assert variant.version > 1
        labels = {node.label for node in store.lineage_of(variant).nodes.values()}
    assert any("mlp-eval" in label for label in labels), labels  # data set -> optimize run


def test_named_columns_are_read_into_the_eval_set() -> None:
    from kilowatt.cli.optimize_cmd import dataset_eval

    _create_eval_dataset(inputs="pixels", targets="digit")
    inputs, labels = eval_set()
    evaluation = dataset_eval("mlp-eval:v1:pixels,digit")
    assert evaluation.inputs.shape == (32, 8)
    assert (evaluation.inputs == inputs).all() and (evaluation.targets == labels).all()


def test_an_unknown_data_set_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["optimize", "model.pt", "--eval", "dataset:no-such:v9"])
    err = capsys.readouterr().err
    assert code == 1
    assert "no-such" in err and "kilowatt data list" in err


def test_columns_that_cannot_be_found_are_named(capsys: pytest.CaptureFixture[str]) -> None:
    _create_eval_dataset(inputs="pixels", targets="digit")
    assert main(["optimize", "model.pt", "--eval", "dataset:mlp-eval:v1"]) == 1
    assert "dataset:mlp-eval:v1:INPUTS,TARGETS" in capsys.readouterr().err.replace("\n", "")
    assert main(["optimize", "model.pt", "--eval", "dataset:mlp-eval:v1:pixels,label"]) == 1
    assert "no column 'label'" in capsys.readouterr().err


LOCAL_CPU = """
instances:
  - {name: local-cpu, cloud: local, regions: [local], accelerator: cpu, accelerator_count: 8,
     vcpus: 16, memory_gib: 32, network_gbps: 1, price_usd_per_hour: PRICE, source: test,
     as_of: 2026-01-01}
"""


@pytest.mark.parametrize(
    ("catalog", "problem"),
    [
        # The built-in local-cpu is priced at 0 (a machine you own): every variant ties.
        (None, "costs 0.0 USD/hour"),
        # A user file that is not YAML: the error names it.
        ("instances: [unclosed", "broken.yaml: not valid YAML"),
        # A user entry missing its price: the error names the entry and the field.
        (LOCAL_CPU.replace("price_usd_per_hour: PRICE, ", ""), "price_usd_per_hour"),
    ],
)
def test_the_cost_objective_refuses_a_missing_price(
    capsys: pytest.CaptureFixture[str], catalog: str | None, problem: str
) -> None:
    catalog_dir = Settings.from_env().catalog_dir
    if catalog is not None:
        catalog_dir.mkdir(parents=True)
        (catalog_dir / "broken.yaml").write_text(catalog)
    code = main(["optimize", "model.pt", "--eval", "x.npz", "--objective", "cost"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 1
    assert "--objective cost needs this machine's price" in err and problem in err
    fix = "named 'local-cpu' with this machine's price_usd_per_hour to a catalog file in"
    assert f"{fix} {catalog_dir}" in err


def test_the_cost_objective_reads_the_price_from_the_user_catalog() -> None:
    from kilowatt.cli.optimize_cmd import _usd_per_s

    catalog_dir = Settings.from_env().catalog_dir
    catalog_dir.mkdir(parents=True)
    (catalog_dir / "local.yaml").write_text(LOCAL_CPU.replace("PRICE", "0.36"))
    assert _usd_per_s("cost") == pytest.approx(0.36 / 3600)


def test_other_objectives_do_not_read_the_catalog() -> None:
    from kilowatt.cli.optimize_cmd import _usd_per_s

    catalog_dir = Settings.from_env().catalog_dir
    catalog_dir.mkdir(parents=True)
    (catalog_dir / "broken.yaml").write_text("instances: [unclosed")
    assert _usd_per_s("energy") == 0.0


def train_data() -> torch.utils.data.TensorDataset:
    inputs, labels = eval_set()
    return torch.utils.data.TensorDataset(torch.from_numpy(inputs), torch.from_numpy(labels))


@pytest.mark.slow
def test_a_distilled_student_is_registered_with_its_transform(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _register_mlp(tmp_path)
    spec = tmp_path / "train.yaml"
    spec.write_text(
        f"name: mlp\nmodel: {__name__}:make_mlp\ndataset: {__name__}:train_data\n"
        "loss: torch.nn.functional:cross_entropy\nsteps: 100\nbatch_size: 16\n"
    )
    code = main([
        "optimize", "mlp:1", "--eval", f"{__name__}:eval_set", "--quick", "--threads", "1",
        "--transforms", "distilled", "--train", str(spec), "--distill-steps", "40",
        "--max-accuracy-drop", "100%",
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "distilled-0.5 x1" in out
    with open_store() as store:
        variant = max(store.list_model_versions("mlp"), key=lambda v: v.version)
        assert variant.version > 1 and variant.signature["parent"] == "mlp:1"
        assert variant.signature["transform"].startswith("knowledge distillation")
        parameters = variant.signature["parameters"]
        assert parameters["student_parameters"] < parameters["teacher_parameters"]
        assert 0.0 <= parameters["teacher_agreement"] <= 1.0
        labels = {node.label for node in store.lineage_of(variant).nodes.values()}
    assert "mlp:1" in labels
