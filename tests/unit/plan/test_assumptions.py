"""Bad or missing input the planner answers with a stated assumption rather than silence:
a spec without a batch, an accelerator without an efficiency figure, fp8 on a part whose
catalog entry gives no fp8 figure."""

from __future__ import annotations

from pathlib import Path

import pytest

from kilowatt.catalog import load_catalog
from kilowatt.plan import Calibration, make_plan

MODEL = {"params": 1.0e9, "layers": 16, "hidden": 2048, "heads": 16, "seq_len": 2048}
NO_DEFAULT = """
accelerators:
  - {name: newchip, vendor: acme, kind: gpu, memory_gib: 80, memory_bandwidth_gb_per_s: 3000,
     peak_tflops: {fp32: 60, bf16: 900}, tdp_w: 700, interconnect: nvlink4,
     interconnect_gb_per_s: 900, source: test, as_of: 2026-11-30}
instances:
  - {name: newchip-8, cloud: aws, regions: [us-east-1], accelerator: newchip,
     accelerator_count: 8, vcpus: 96, memory_gib: 1024, network_gbps: 400,
     price_usd_per_hour: 40, source: test, as_of: 2026-11-30}
"""


def _spec(**train: object) -> dict[str, object]:
    return {
        "model": MODEL,
        "train": {"tokens": 2e10, **train},
        "constraints": {"instances": ["p4d.24xlarge"], "max_accelerators": 8},
    }


def test_a_spec_without_a_batch_states_the_assumed_one() -> None:
    result = make_plan(_spec(), calibration=Calibration())
    assert "Assumed: a global batch of 1,048,576 tokens per step" in result.explanation[-1]
    given = make_plan(_spec(global_batch_tokens=2**21), calibration=Calibration())
    assert not any(line.startswith("Assumed: a global batch") for line in given.explanation)


def test_an_accelerator_without_a_default_says_what_was_assumed(tmp_path: Path) -> None:
    extra = tmp_path / "newchip.yaml"
    extra.write_text(NO_DEFAULT)
    catalog = load_catalog(extra_files=[extra])
    spec = {**_spec(), "constraints": {"instances": ["newchip-8"], "max_accelerators": 8}}
    result = make_plan(spec, catalog=catalog, calibration=Calibration())
    assumed = [line for line in result.explanation if line.startswith("Assumed 40%")]
    assert assumed == [
        "Assumed 40% of peak for newchip, whose catalog entry gives no mfu_default; "
        "measure it with `kilowatt profile` or set one."
    ]


def test_fp8_without_its_own_figure_is_not_twice_as_fast() -> None:
    l40s = load_catalog().accelerator("l40s")  # fp8 peak in the catalog, no fp8 efficiency
    assert "fp8" not in l40s.mfu_by_precision
    fp8_rate = l40s.peak_flops("fp8") * l40s.default_mfu("fp8")
    bf16_rate = l40s.peak_flops("bf16") * l40s.default_mfu("bf16")
    # the fp8 peak (about twice bf16's) times half the bf16 share x Meta's published ratio
    peaks = l40s.peak_flops("fp8") / l40s.peak_flops("bf16")
    assert fp8_rate / bf16_rate == pytest.approx(peaks * (390 / 400) / 2)
    assert fp8_rate / bf16_rate < 1.0
    assert "published fp8/bf16 throughput ratio" in l40s.mfu_basis("fp8")
