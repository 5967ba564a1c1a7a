"""`kilowatt plan` and `kilowatt catalog` driven through the CLI, in-process and as a
subprocess: tables, JSON, and the errors users see for bad specs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kilowatt.cli.main import main

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "plans"
GOOD_MODEL = "model: {params: 1.0e8, layers: 12, hidden: 768, heads: 12, seq_len: 1024}\n"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def test_plan_prints_a_table_and_explanation(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["plan", str(EXAMPLES / "2b-transformer.yaml")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "2b-transformer: training plans by cost (on_demand)" in out
    for column in ("on-demand", "spot", "mixed", "kg CO2e", "bound by"):
        assert column in out
    assert "Bottleneck: compute-bound" in out
    assert "fits whole only on parts of 40 GiB or more" in out
    assert "by deadline" in out and "by memory" in out


def test_plan_json_is_the_documented_result(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["plan", str(EXAMPLES / "7b-chat-serving.yaml"), "--json", "--top", "2"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert doc["kind"] == "serve" and len(doc["plans"]) == 2
    top = doc["recommendation"]
    assert top == doc["plans"][0]
    assert top["latency_p99_s"] <= 2.0
    assert top["replicas"] * top["requests_per_s_per_replica"] * 0.7 >= 50
    assert doc["configurations_evaluated"] > 0
    assert set(doc["best_by_objective"]) == {"time", "cost", "energy", "carbon"}


def test_objective_flag_reranks(capsys: pytest.CaptureFixture[str]) -> None:
    main(["plan", str(EXAMPLES / "2b-transformer.yaml"), "--json", "--objective", "time"])
    doc = json.loads(capsys.readouterr().out)
    times = [p["time_s"] for p in doc["plans"]]
    assert doc["objective"] == "time" and times == sorted(times)


def test_catalog_flag_overrides_a_price(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cheap = tmp_path / "cheap.yaml"
    cheap.write_text(
        "instances:\n"
        "  - {name: local-cpu, cloud: local, regions: [local], accelerator: cpu,"
        " accelerator_count: 16, vcpus: 32, memory_gib: 64, network_gbps: 1,"
        " price_usd_per_hour: 0.5, source: my workstation, as_of: 2026-01-01}\n"
    )
    spec = str(EXAMPLES / "small-cnn-cpu.yaml")
    main(["plan", spec, "--json", "--catalog", str(cheap)])
    top = json.loads(capsys.readouterr().out)["recommendation"]
    # 16 cores instead of 8 and a price: cost = hours x $0.5
    assert top["memory"]["capacity_gib"] == pytest.approx(64 * 0.9)
    assert top["costs"]["on_demand_usd"] == pytest.approx(top["time_on_demand_s"] / 3600 * 0.5)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # an unknown key is an error naming the file and the key path
        (
            GOOD_MODEL + "train: {tokens: 1e9, learning_rate: 3e-4}\n",
            r"train\.learning_rate: unknown key",
        ),
        # a negative size names the field and the value given
        (
            "model: {params: -5, layers: 12, hidden: 768, heads: 12, seq_len: 1024}\n"
            "train: {tokens: 1e9}\n",
            r"model\.params: Input should be greater than 0 \(got -5\)",
        ),
        # an accelerator the catalog does not have gets suggestions
        (
            GOOD_MODEL + "train: {tokens: 1e9}\nconstraints: {accelerators: [h100]}\n",
            r"unknown accelerator 'h100'\. Did you mean h100-sxm",
        ),
        # a model that fits nowhere says why and how to fix it
        (
            "model: {params: 5.0e13, layers: 12, hidden: 768, heads: 12, seq_len: 1024}\n"
            "train: {tokens: 1e9}\n",
            r"no configuration satisfies .* by memory.*To fix:",
        ),
        # neither train nor serve
        (GOOD_MODEL, r"give exactly one of train: or serve:"),
    ],
)
def test_invalid_specs_fail_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    rc = main(["plan", str(_write(tmp_path, text))])
    err = capsys.readouterr().err
    assert rc == 1
    assert "Traceback" not in err
    assert err.startswith("error:")
    assert re.search(message, " ".join(err.split()), re.DOTALL), err


def test_missing_spec_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(tmp_path / "nope.yaml")]) == 1
    assert "nope.yaml: no such file" in capsys.readouterr().err


def test_catalog_list_and_show(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["catalog", "list", "accelerators"]) == 0
    out = capsys.readouterr().out
    assert "mi300x" in out and "tpu-v5p" in out and "regions" not in out
    assert main(["catalog", "show", "p5.48xlarge"]) == 0
    entry = json.loads(capsys.readouterr().out)
    assert (entry["accelerator"], entry["accelerator_count"]) == ("h100-sxm", 8)
    assert entry["source"] and entry["as_of"]
    assert main(["catalog", "show", "h10"]) == 1
    assert "Did you mean h100-sxm" in capsys.readouterr().err


def test_plan_help_and_make_run_command_as_a_subprocess() -> None:
    cli = [sys.executable, "-m", "kilowatt.cli.main"]
    shown = subprocess.run([*cli, "plan", "--help"], capture_output=True, text=True, check=True)
    assert "--json" in shown.stdout and "--catalog" in shown.stdout
    ran = subprocess.run(
        [*cli, "plan", str(EXAMPLES / "2b-transformer.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr
    assert "Recommended (cost)" in ran.stdout
