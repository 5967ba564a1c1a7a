"""The closed-form continuous-batching estimate against the event simulation it stands in for."""

from __future__ import annotations

import pytest

from kilowatt.plan.llm_serving import Engine, poisson_arrivals, simulate
from kilowatt.plan.llm_steady import capacity_requests_per_s, steady_state
from kilowatt.spec.plan import PlanModel

GQA_7B = PlanModel(params=7.25e9, layers=32, hidden=4096, heads=32, kv_heads=8, seq_len=4096)
MHA_7B = PlanModel(params=7e9, layers=32, hidden=4096, heads=32, seq_len=4096)


def _engine(model: PlanModel, memory_gib: float, bandwidth: float) -> Engine:
    return Engine.for_model(
        model,
        memory_bytes=memory_gib * 2**30,
        bandwidth_bytes_per_s=bandwidth,
        flops_per_s=150e12,
    )


CASES = [  # (engine, prompt, output): plenty of KV cache; KV-limited at 27 and at 29 slots
    (_engine(GQA_7B, 80, 3.35e12), 512, 256),
    (_engine(MHA_7B, 24, 2e12), 512, 256),
    (_engine(MHA_7B, 48, 2e12), 2000, 200),
]


@pytest.mark.parametrize("load", [0.3, 0.6])
@pytest.mark.parametrize(("engine", "prompt", "output"), CASES)
def test_steady_state_agrees_with_the_simulation(
    engine: Engine, prompt: int, output: int, load: float
) -> None:
    """Stated tolerance: mean inter-token latency and median time to first token within 10%,
    p99 time to first token within 40%, at up to 60% of the estimated capacity."""
    rate = load * capacity_requests_per_s(engine, prompt, output)
    estimate = steady_state(engine, rate, prompt, output)
    simulated = simulate(engine, poisson_arrivals(rate, 300, prompt, output, seed=0))
    assert estimate is not None
    assert estimate.iteration_s == pytest.approx(simulated.tpot_s.p50, rel=0.1)
    assert estimate.ttft_s.p50 == pytest.approx(simulated.ttft_s.p50, rel=0.1)
    assert estimate.ttft_s.p99 == pytest.approx(simulated.ttft_s.p99, rel=0.4)
    assert rate * output == pytest.approx(simulated.output_tokens_per_s, rel=0.1)


def test_kv_memory_caps_the_concurrent_sequences_and_the_rate() -> None:
    small, large = _engine(MHA_7B, 24, 2e12), _engine(MHA_7B, 48, 2e12)
    tight, roomy = steady_state(small, 1.0, 512, 256), steady_state(large, 1.0, 512, 256)
    assert tight is not None and roomy is not None
    assert tight.kv_limited and tight.slots == 27
    assert roomy.slots > 3 * tight.slots
    assert capacity_requests_per_s(small, 512, 256) < capacity_requests_per_s(large, 512, 256)


def test_a_rate_beyond_capacity_has_no_steady_state() -> None:
    engine = _engine(MHA_7B, 24, 2e12)
    assert steady_state(engine, 1.01 * capacity_requests_per_s(engine, 512, 256), 512, 256) is None
