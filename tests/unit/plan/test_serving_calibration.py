"""Measured serving throughput calibrates the serving planner, apart from training's MFU."""

from __future__ import annotations

from kilowatt.plan import Calibration, make_plan
from kilowatt.plan.calibration import serving_class
from kilowatt.plan.result import ServeOption

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
