"""One checkpoint-interval rule: the planner prices spot runs with the interval the trainer
then checkpoints at (``every: auto``)."""

from __future__ import annotations

import math

import pytest

from kilowatt.plan.time import time_with_preemptions_s
from kilowatt.spec.train import young_daly_interval_s
from kilowatt.train.loop import _Interval


@pytest.mark.parametrize(
    ("cost_s", "mtbf_s", "expected_s"),
    [
        (2.0, 3600.0, 118.0),  # sqrt(2*2*3600) - 2
        (10.0, 7200.0, 369.47),  # sqrt(2*10*7200) - 10
        (3000.0, 3600.0, 4647.58),  # cost beyond MTBF/2: no correction
        (60.0, math.inf, math.inf),  # never preempted: never checkpoint for it
    ],
)
def test_young_daly_interval(cost_s: float, mtbf_s: float, expected_s: float) -> None:
    assert young_daly_interval_s(cost_s, mtbf_s) == pytest.approx(expected_s, abs=0.01)


@pytest.mark.parametrize(
    ("checkpoint_s", "mtbf_s"),
    [
        (60.0, 36000.0),  # a minute to save, a preemption every 10 h
        (2.0, 3600.0),  # a small model on busy spot capacity
        (3000.0, 3600.0),  # a checkpoint nearly as long as the time between preemptions
    ],
)
def test_plan_and_trainer_choose_the_same_interval(checkpoint_s: float, mtbf_s: float) -> None:
    _, planned_s = time_with_preemptions_s(1e6, checkpoint_s, 1.0 / mtbf_s, restart_s=0.0)
    trainer = _Interval("auto", mtbf_s)
    trainer.saved(step=1, stall_s=checkpoint_s, write_s=0.0)  # the measured checkpoint cost
    assert trainer.period_s == pytest.approx(planned_s)
