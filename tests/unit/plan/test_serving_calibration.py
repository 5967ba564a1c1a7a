"""Measured serving calibrates the serving planner apart from training's MFU: throughput
through the overall fraction of peak, time to first token through the prefill rate."""

from __future__ import annotations

import re

import pytest

from kilowatt.catalog import load_catalog
from kilowatt.plan import Calibration, make_plan
from kilowatt.plan.calibration import serving_class
from kilowatt.plan.compute import forward_flops_per_token
from kilowatt.plan.device import Device
from kilowatt.plan.llm_serving import STEP_OVERHEAD_S
from kilowatt.plan.result import ServeOption
from kilowatt.spec.plan import PlanModel

SPEC = {
    "name": "small-chat",
    "model": {"params": 1.1e7, "layers": 6, "hidden": 384, "heads": 6, "seq_len": 512},
    "serve": {"requests_per_s": 1, "p99_latency_s": 600, "prompt_tokens": 32,
              "output_tokens": 64, "precision": "fp32", "max_batch": 16},
    "constraints": {"instances": ["local-cpu"]},
}  # fmt: skip


def _option(calibration: Calibration) -> ServeOption:
    option = make_plan(SPEC, calibration=calibration).recommendation
    assert isinstance(option, ServeOption)
    return option


def test_a_serving_measurement_outranks_the_training_one_for_serving() -> None:
    trained = Calibration().with_measurement("cpu", "transformer", 0.5)
    served = trained.with_measurement("cpu", serving_class("transformer"), 0.005)
    by_training, by_serving = _option(trained), _option(served)
    # a hundred times less of the peak measured while serving: prefill turns compute-bound
    # and far slower (not the full 100x: at the training figure it was bound by memory reads)
    assert by_serving.prefill_s > 20 * by_training.prefill_s
    assert _option(Calibration()).prefill_s < by_serving.prefill_s


def _prefill_mfu(prompt_tokens_per_s: float) -> float:
    """The fraction of local-cpu's peak (all 8 cores) that prefilling this many prompt
    tokens a second of the SPEC model is, counting 2 x parameters FLOP per token."""
    catalog = load_catalog()
    device = Device.of(catalog.instance("local-cpu"), catalog)
    per_token = forward_flops_per_token(PlanModel(**SPEC["model"]), 0)
    return prompt_tokens_per_s * per_token / device.peak_flops("fp32")


def test_a_measured_prefill_rate_sets_the_time_to_first_token() -> None:
    # A serving run measured 1,600 prompt tokens/s of prefill (and 1% of peak overall).
    served = serving_class("transformer")
    overall = Calibration().with_measurement("cpu", served, 0.01)
    measured = overall.with_measurement("cpu", served, 0.01, prefill_mfu=_prefill_mfu(1600))
    plan = make_plan(SPEC, calibration=measured)
    option = plan.recommendation
    assert isinstance(option, ServeOption)
    # 32 prompt tokens at 1,600/s, plus the step overhead (and a little decode arithmetic)
    assert option.prefill_s == pytest.approx(32 / 1600 + STEP_OVERHEAD_S, rel=0.05)
    assert _option(overall).prefill_s > 3 * option.prefill_s  # the overall figure is slower
    assert _option(Calibration()).prefill_s < option.prefill_s / 3  # and the catalog's faster
    simulated = re.search(r"time to first token p50 ([\d,]+) ms", " ".join(plan.explanation))
    assert simulated is not None
    assert float(simulated.group(1)) == pytest.approx((32 / 1600 + STEP_OVERHEAD_S) * 1e3, abs=2)
    note = [line for line in plan.explanation if line.startswith("Time to first token")]
    assert len(note) == 1
    assert "calibrated" in note[0] and "1,600 prompt tokens/s" in note[0]
    assert "cpu/transformer-serving" in note[0]


def test_a_plan_without_a_measured_prefill_rate_says_nothing_of_one() -> None:
    for calibration in (
        Calibration(),
        Calibration().with_measurement("cpu", serving_class("transformer"), 0.01),
        # a prefill rate measured on another accelerator does not apply here
        Calibration().with_measurement(
            "a100-80gb", serving_class("transformer"), 0.3, prefill_mfu=0.5
        ),
    ):
        plan = make_plan(SPEC, calibration=calibration)
        assert not any("calibrated" in line for line in plan.explanation)
    other = Calibration().with_measurement(
        "a100-80gb", serving_class("transformer"), 0.3, prefill_mfu=0.5
    )
    assert _option(other) == _option(Calibration())
