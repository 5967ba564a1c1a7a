"""Estimator formulas on hand-computed cases."""

from __future__ import annotations

import math

import pytest

from kilowatt.catalog import load_catalog
from kilowatt.plan.compute import training_flops
from kilowatt.plan.cost import PriceBook, storage_cost_usd
from kilowatt.plan.energy import accelerator_power_w, footprint
from kilowatt.plan.inference import decode_step_s, prefill_s, replicas_needed
from kilowatt.plan.memory import activation_bytes, training_state_bytes
from kilowatt.plan.network import allreduce_time_s, data_parallel_comm_s, tensor_parallel_comm_s
from kilowatt.plan.time import (
    exposed_comm_s,
    pipeline_bubble_fraction,
    time_with_preemptions_s,
)
from kilowatt.spec.plan import PlanModel, TrainingWorkload

SMALL = PlanModel(params=1e9, layers=10, hidden=1000, heads=10, seq_len=100)


def test_dense_training_flops_hand_computed() -> None:
    # 6·N·D = 6e9 x 1e6 = 6e15; attention 6·L·s·h·D = 6 x 10 x 100 x 1000 x 1e6 = 6e12
    assert training_flops(SMALL, TrainingWorkload(tokens=1e6)) == pytest.approx(6.006e15)


def test_moe_computes_with_active_parameters() -> None:
    moe = SMALL.model_copy(update={"architecture": "moe", "active_params": 2.5e8})
    assert training_flops(moe, TrainingWorkload(tokens=1e6)) == pytest.approx(1.506e15)


def test_generic_model_is_three_forwards_per_sample_per_epoch() -> None:
    cnn = PlanModel(architecture="generic", params=1e6, forward_flops_per_sample=2e9)
    flops = training_flops(cnn, TrainingWorkload(samples=1000, epochs=5))
    assert flops == pytest.approx(3 * 2e9 * 1000 * 5)


def test_zero_stages_shard_state_as_the_paper_says() -> None:
    state = training_state_bytes(1e9, "bf16", "adamw")  # 2 + 2 + 12 GB
    assert state.sharded(8, 0, 1).total == pytest.approx(16e9)
    assert state.sharded(8, 1, 1).total == pytest.approx(2e9 + 2e9 + 12e9 / 8)
    assert state.sharded(8, 2, 1).total == pytest.approx(2e9 + 2e9 / 8 + 12e9 / 8)
    assert state.sharded(8, 3, 1).total == pytest.approx(16e9 / 8)
    # tensor x pipeline degree 4 divides everything first
    assert state.sharded(2, 3, 4).total == pytest.approx(16e9 / 8)


def test_activation_memory_follows_korthikanti() -> None:
    # s=100, b=2, h=1000, a=10: per layer s·b·h·(34 + 5·a·s/h) = 2e5 x 39 bytes
    none = activation_bytes(SMALL, 2)
    assert none == pytest.approx(10 * 2e5 * 39)
    assert activation_bytes(SMALL, 2, recompute="selective") == pytest.approx(10 * 2e5 * 34)
    assert activation_bytes(SMALL, 2, recompute="full") == pytest.approx(10 * 2e5 * 2)
    assert activation_bytes(SMALL, 2, tp=2, recompute="selective") == pytest.approx(10 * 1e5 * 34)
    # 1F1B: first stage keeps pp micro-batches of L/pp layers -> same total as pp=1
    assert activation_bytes(SMALL, 2, pp=2, microbatches_in_flight=8) == pytest.approx(none)
    # fp32 doubles every value
    assert activation_bytes(SMALL, 2, precision="fp32") == pytest.approx(2 * none)


def test_ring_allreduce_and_hierarchy() -> None:
    # one node of 8: 2 x 7/8 x 1 GB over 100 GB/s
    assert allreduce_time_s(1e9, 8, 1, 100e9, 1e9) == pytest.approx(0.0175)
    # 4 nodes x 8: add 2 x 3/4 x 1 GB over the 10 GB/s node network
    assert allreduce_time_s(1e9, 8, 4, 100e9, 10e9) == pytest.approx(0.0175 + 0.15)
    # ZeRO-3 moves 1.5x; a single rank moves nothing
    assert data_parallel_comm_s(1e9, 3, 8, 1, 100e9, 1e9) == pytest.approx(1.5 * 0.0175)
    assert data_parallel_comm_s(1e9, 0, 1, 1, 100e9, 1e9) == 0.0
    # tensor parallel: 4 all-reduces per layer of 1 MB over 2 ranks at 100 GB/s, 10 layers
    assert tensor_parallel_comm_s(1e6, 10, 2, 100e9) == pytest.approx(40 * 1e6 / 100e9)


def test_overlap_hides_at_most_the_backward_pass() -> None:
    assert exposed_comm_s(1.0, 3.0, 0.5) == pytest.approx(0.5)
    assert exposed_comm_s(1.0, 0.3, 1.0) == pytest.approx(0.8)  # backward is only 0.2 s


def test_pipeline_bubble() -> None:
    assert pipeline_bubble_fraction(4, 12) == pytest.approx(0.25)
    assert pipeline_bubble_fraction(1, 12) == 0.0


def test_young_daly_interval_and_spot_overhead() -> None:
    # C = 60 s, M = 10 h: sqrt(2 x 60 x 36000) - 60 = 2018.5 s (Young with Daly's correction)
    wall, tau = time_with_preemptions_s(36000.0, 60.0, 1 / 36000, 600.0)
    assert tau == pytest.approx(2018.46, rel=1e-4)
    overhead = 60.0 / tau + (tau / 2 + 600.0) / 36000
    assert wall == pytest.approx(36000.0 / (1 - overhead))
    # no preemptions: no overhead and no interval
    assert time_with_preemptions_s(100.0, 60.0, 0.0, 600.0) == (100.0, math.inf)


def test_prices_under_each_model() -> None:
    inst = load_catalog().instance("p4d.24xlarge")
    prices = PriceBook.of(inst)
    assert prices.spot == pytest.approx(inst.price_usd_per_hour * (1 - inst.spot_discount))
    assert prices.mixed(0.5) == pytest.approx((prices.spot + prices.committed) / 2)
    assert prices.compute_cost_usd(10.0, 2, 1800.0) == pytest.approx(10.0)
    region = load_catalog().region("us-east-1")
    # 100 GB for 30 days at $0.023/GB-month: 100 x 0.023 x 720/730
    assert storage_cost_usd(100.0, 30 * 86400, region) == pytest.approx(2.3 * 720 / 730)


def test_power_energy_and_carbon() -> None:
    assert accelerator_power_w(400.0, 60.0, 1.0) == 400.0
    assert accelerator_power_w(400.0, 60.0, 0.0) == 60.0
    region = load_catalog().region("us-east-1")  # 290 g/kWh, PUE 1.15
    foot = footprint(1000.0, 3600.0, region)
    assert foot.energy_j == pytest.approx(3.6e6 * 1.15)
    assert foot.carbon_gco2e == pytest.approx(1.15 * 290.0)


def test_decode_is_memory_bound_at_batch_one() -> None:
    llama7 = PlanModel(params=7e9, layers=32, hidden=4096, heads=32, seq_len=4096)
    # 14 GB of bf16 weights at 2 TB/s: 7 ms per token; the KV cache at 1000 tokens adds
    # 1000 x 0.5 MiB / 2 TB/s.
    step, memory_bound = decode_step_s(llama7, 1, 1000, "bf16", 1e15, 2e12)
    assert step == pytest.approx((14e9 + 1000 * 2**19) / 2e12)
    assert memory_bound
    # at batch 512 the arithmetic wins on a slow-compute part
    step, memory_bound = decode_step_s(llama7, 512, 0, "bf16", 1e13, 2e12)
    assert not memory_bound
    assert step == pytest.approx(512 * 2 * 7e9 / 1e13)


def test_prefill_is_compute_bound_for_long_prompts() -> None:
    llama7 = PlanModel(params=7e9, layers=32, hidden=4096, heads=32, seq_len=4096)
    per_token = 2 * 7e9 + 2 * 32 * 256 * 4096
    assert prefill_s(llama7, 512, 4, 1e15, 2e12) == pytest.approx(4 * 512 * per_token / 1e15)


def test_replicas_for_a_request_rate() -> None:
    assert replicas_needed(50.0, 10.0, 0.7) == 8  # 50 / 7 = 7.1 -> 8
    assert replicas_needed(7.0, 10.0, 0.7) == 1
