"""The search over a four-row in-memory catalog: who wins under each objective and why,
what gets rejected, and the examples shipped in examples/plans/."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from kilowatt.catalog import Accelerator, Catalog, Instance, Region
from kilowatt.errors import CatalogLookupError, PlanInfeasible, SpecError
from kilowatt.plan import Calibration, PlanResult, TrainOption, make_plan, record_measurement
from kilowatt.plan.result import ServeOption
from kilowatt.spec.train import young_daly_interval_s

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "plans"
TODAY = dt.date(2026, 1, 1)


def _acc(name: str, memory_gib: float, bf16_tflops: float, tdp_w: float) -> Accelerator:
    return Accelerator(
        name=name, vendor="test", kind="gpu", memory_gib=memory_gib,
        memory_bandwidth_gb_per_s=2000, peak_tflops={"fp32": bf16_tflops / 4, "bf16": bf16_tflops},
        tdp_w=tdp_w, idle_w=tdp_w / 4, interconnect="link", interconnect_gb_per_s=600,
        mfu_default=0.4, source="test", as_of=TODAY,
    )  # fmt: skip


def _inst(name: str, acc: str, count: int, price: float, regions: list[str]) -> Instance:
    return Instance(
        name=name, cloud="test", regions=regions, accelerator=acc, accelerator_count=count,
        vcpus=8, memory_gib=64, network_gbps=400, price_usd_per_hour=price, spot_discount=0.6,
        commit_1y_discount=0.3, spot_interruptions_per_hour=0.01, host_power_w=100,
        source="test", as_of=TODAY,
    )  # fmt: skip


def _region(name: str, intensity: float) -> Region:
    return Region(
        name=name, cloud="test", location=name, grid_intensity_gco2e_per_kwh=intensity,
        pue=1.1, source="test", as_of=TODAY,
    )  # fmt: skip


@pytest.fixture
def tiny() -> Catalog:
    return Catalog(
        accelerators={a.name: a for a in [_acc("big", 80, 1000, 700), _acc("small", 24, 100, 70)]},
        instances={
            i.name: i
            for i in [
                _inst("big-8", "big", 8, 100.0, ["dirty", "green"]),
                _inst("small-1", "small", 1, 1.0, ["dirty"]),
            ]
        },
        regions={r.name: r for r in [_region("dirty", 500), _region("green", 50)]},
    )


def _spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "test",
        "model": {"params": 1e8, "layers": 12, "hidden": 768, "heads": 12, "seq_len": 1024},
        "train": {"tokens": 1e10, "global_batch_tokens": 2**19},
    }
    for key, value in overrides.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    return spec


def _top(result: PlanResult) -> TrainOption:
    assert isinstance(result.recommendation, TrainOption)
    return result.recommendation


def test_time_objective_picks_the_fastest_fleet(tiny: Catalog) -> None:
    # big-8 brings 8 x 1000 TFLOP/s per node, small-1 100: big wins on time.
    result = make_plan(_spec(objective="time"), catalog=tiny, calibration=Calibration())
    assert _top(result).accelerator == "big"
    assert result.plans == sorted(result.plans, key=lambda p: p.time_s)


def test_cost_objective_picks_the_cheapest_flops(tiny: Catalog) -> None:
    # small: $1/h for 40 effective TFLOP/s; big: $12.5/h per GPU for 400 -> small is cheaper.
    result = make_plan(_spec(objective="cost"), catalog=tiny, calibration=Calibration())
    assert _top(result).accelerator == "small"
    assert result.plans == sorted(result.plans, key=lambda p: p.cost_usd)


def test_carbon_objective_moves_to_the_clean_grid(tiny: Catalog) -> None:
    # Only big-8 is offered in the 50 g/kWh region, a tenth of the other grid.
    result = make_plan(_spec(objective="carbon"), catalog=tiny, calibration=Calibration())
    assert (_top(result).instance, _top(result).region) == ("big-8", "green")


def test_single_node_time_matches_hand_computation(tiny: Catalog) -> None:
    spec = _spec(constraints={"instances": ["small-1"], "max_accelerators": 1}, top=1)
    top = _top(make_plan(spec, catalog=tiny, calibration=Calibration()))
    flops = (6 * 1e8 + 6 * 12 * 1024 * 768) * 1e10
    steps = round(1e10 / 2**19 + 0.5)
    # one accelerator at 40% of 100 TFLOP/s on wide matrices, times the width share of a
    # 768-wide model (768 / (768 + 512)); no communication; checkpoints hourly
    work_s = flops / steps * steps / (100e12 * 0.4 * 768 / (768 + 512))
    assert top.compute_s_per_step * top.steps == pytest.approx(work_s, rel=1e-6)
    assert top.comm_s_per_step == 0
    checkpoint_s = 12 * 1e8 / 1e9  # fp32 master + Adam states at 1 GB/s
    assert top.time_on_demand_s == pytest.approx(work_s + (work_s // 3600) * checkpoint_s)
    assert top.costs.on_demand_usd == pytest.approx(top.time_on_demand_s / 3600 * 1.0)


def test_deadline_rejects_slow_plans_and_says_so(tiny: Catalog) -> None:
    spec = _spec(objective="cost", constraints={"deadline_h": 10})
    result = make_plan(spec, catalog=tiny, calibration=Calibration())
    assert result.rejected_by_reason["deadline"] > 0
    assert all(p.time_s <= 10 * 3600 for p in result.plans)
    assert any("by deadline" in line for line in result.explanation)


def test_model_that_fits_nowhere_is_infeasible(tiny: Catalog) -> None:
    huge = _spec(model={"params": 1e13}, parallelism={"zero_stages": [0]})
    with pytest.raises(PlanInfeasible, match=r"were rejected \(\d+ by memory") as info:
        make_plan(huge, catalog=tiny, calibration=Calibration())
    assert "To fix: allow sharding" in str(info.value)


def test_max_accelerators_excludes_big_instances(tiny: Catalog) -> None:
    result = make_plan(
        _spec(constraints={"max_accelerators": 4}), catalog=tiny, calibration=Calibration()
    )
    assert {p.instance for p in result.plans} == {"small-1"}
    assert result.rejected_by_reason["max_accelerators"] == 2  # big-8 in two regions


def test_unknown_names_in_constraints_suggest_fixes(tiny: Catalog) -> None:
    with pytest.raises(CatalogLookupError, match=r"unknown accelerator 'bigg'.*Did you mean big"):
        make_plan(_spec(constraints={"accelerators": ["bigg"]}), catalog=tiny)
    with pytest.raises(SpecError, match=r"unknown cloud\(s\) \['aws'\]"):
        make_plan(_spec(constraints={"clouds": ["aws"]}), catalog=tiny, calibration=Calibration())


def test_calibration_replaces_the_default_mfu(tiny: Catalog) -> None:
    spec = _spec(constraints={"instances": ["small-1"], "max_accelerators": 1})
    default = _top(make_plan(spec, catalog=tiny, calibration=Calibration()))
    measured = Calibration().with_measurement("small", "transformer", 0.2)
    calibrated = _top(make_plan(spec, catalog=tiny, calibration=measured))
    assert (calibrated.mfu, calibrated.mfu_source) == (0.2, "calibration")
    assert calibrated.compute_s_per_step == pytest.approx(2 * default.compute_s_per_step)
    # an MFU in the spec wins over both
    forced = _top(make_plan(_spec(train={"mfu": 0.1}), catalog=tiny, calibration=measured))
    assert (forced.mfu, forced.mfu_source) == (0.1, "spec")


def test_json_output_round_trips(tiny: Catalog) -> None:
    result = make_plan(_spec(), catalog=tiny, calibration=Calibration())
    again = PlanResult.model_validate_json(result.model_dump_json())
    assert again == result


def test_serving_latency_objective_that_nothing_meets(tiny: Catalog) -> None:
    spec = {
        "name": "chat",
        "model": {"params": 7e9, "layers": 32, "hidden": 4096, "heads": 32, "seq_len": 4096},
        "serve": {"requests_per_s": 10, "p99_latency_s": 0.01, "output_tokens": 100},
    }
    with pytest.raises(PlanInfeasible, match=r"no configuration serves 'chat'.*by latency"):
        make_plan(spec, catalog=tiny, calibration=Calibration())


def test_serving_sizes_replicas_for_the_rate(tiny: Catalog) -> None:
    spec = {
        "name": "chat",
        "model": {"params": 7e9, "layers": 32, "hidden": 4096, "heads": 32, "seq_len": 4096},
        "serve": {"requests_per_s": 50, "p99_latency_s": 5, "output_tokens": 100},
    }
    result = make_plan(spec, catalog=tiny, calibration=Calibration())
    for option in result.plans:
        assert option.latency_p99_s <= 5
        capacity = option.replicas * option.requests_per_s_per_replica * 0.7
        assert capacity >= 50 - 1e-9
    # weights 14 GB: small (24 GiB x 0.9) holds one replica only with a modest KV cache
    assert result.rejected_by_reason.get("memory", 0) > 0


def test_every_example_plans() -> None:
    names = sorted(p.name for p in EXAMPLES.glob("*.yaml"))
    assert names == [
        "2b-transformer.yaml",
        "70b-finetune.yaml",
        "7b-chat-serving.yaml",
        "small-cnn-cpu.yaml",
    ]
    for name in names:
        result = make_plan(EXAMPLES / name)
        assert result.plans and result.explanation


def test_2b_example_needs_40_to_80_gb_parts_and_prices_spot_and_mixed() -> None:
    result = make_plan(EXAMPLES / "2b-transformer.yaml")
    top = _top(result)
    # an unsharded replica is ~34 GiB: more than 24 GB parts hold, less than 40 GB ones
    assert 24 * 0.9 < result.workload["replica_memory_gib"] <= 40 * 0.9
    assert any("fits whole only on parts of 40 GiB or more" in s for s in result.explanation)
    assert 40 <= top.memory.capacity_gib / 0.9 <= 80
    assert top.costs.spot_usd < top.costs.mixed_usd < top.costs.on_demand_usd
    assert top.time_s <= 168 * 3600
    assert result.search_time_s < 5  # a regression guard, not a benchmark


def test_cpu_plan_uses_calibration_from_kilowatt_home(clean_environment: Path) -> None:
    spec = EXAMPLES / "small-cnn-cpu.yaml"
    before = _top(make_plan(spec))
    assert (before.instance, before.mfu_source) == ("local-cpu", "catalog default")
    record_measurement(None, "cpu", "cnn", achieved_flops=0.4e12, peak_flops=0.8e12)
    assert (clean_environment / "calibration.json").exists()
    after = _top(make_plan(spec))
    assert (after.mfu, after.mfu_source) == (0.5, "calibration")
    # 0.5 instead of the 0.25 default halves the compute time
    assert after.compute_s_per_step == pytest.approx(before.compute_s_per_step / 2)


@pytest.mark.parametrize("pricing", ["spot", "mixed", "committed"])
def test_pricing_basis_sets_time_and_cost(tiny: Catalog, pricing: str) -> None:
    spec = _spec(constraints={"instances": ["big-8"], "pricing": pricing}, top=1)
    top = _top(make_plan(spec, catalog=tiny, calibration=Calibration()))
    basis = {
        "spot": (top.time_spot_s, top.costs.spot_usd),
        "mixed": (top.time_s, top.costs.mixed_usd),  # between the two, checked below
        "committed": (top.time_on_demand_s, top.costs.committed_usd),
    }[pricing]
    assert top.time_s == pytest.approx(basis[0])
    assert top.cost_usd == pytest.approx(basis[1] + top.costs.storage_usd + top.costs.egress_usd)
    # preemptions only ever lengthen a run; half the fleet on spot sees half the rate
    assert top.time_on_demand_s <= top.time_s <= top.time_spot_s
    if pricing == "spot":
        # Young/Daly over the preemption rate of the whole fleet: the trainer's rule too
        nodes_rate = top.nodes * 0.01 / 3600
        checkpoint_s = 12 * 1e8 / (top.nodes * 1e9)
        assert top.spot_checkpoint_interval_s == pytest.approx(
            young_daly_interval_s(checkpoint_s, 1 / nodes_rate)
        )


def test_continuous_batching_ranks_kv_memory_above_batch_latency() -> None:
    """Long outputs under a 40 s p99: a static batch must finish before the next starts, so
    both parts run batches of 4 and the cheaper 24 GiB part wins; with continuous batching
    the 80 GiB part keeps 64 sequences running within the objective, while the 24 GiB part's
    KV cache holds only 15, so the 80 GiB part serves the rate for less."""
    from kilowatt.plan.device import Device
    from kilowatt.plan.inference import estimate_replica, replicas_needed
    from kilowatt.spec.plan import PlanSpec

    parts = [_acc("roomy", 80, 400, 400), _acc("tight", 24, 400, 400)]
    offers = [_inst("roomy-1", "roomy", 1, 1.6, ["r"]), _inst("tight-1", "tight", 1, 1.0, ["r"])]
    catalog = Catalog(
        accelerators={a.name: a for a in parts},
        instances={i.name: i for i in offers},
        regions={"r": _region("r", 300)},
    )  # fmt: skip
    spec = {
        "name": "chat",
        "model": {"params": 7e9, "layers": 32, "hidden": 4096, "heads": 32, "seq_len": 4096},
        "serve": {"requests_per_s": 20, "p99_latency_s": 40, "prompt_tokens": 128,
                  "output_tokens": 2048},
    }  # fmt: skip
    parsed = PlanSpec.model_validate(spec)
    assert parsed.serve is not None

    def static_cost(name: str) -> float:
        inst = catalog.instance(name)
        device = Device.of(inst, catalog)
        estimates = [estimate_replica(device, 1, b, parsed.serve, parsed.model, 0.4)
                     for b in (1, 2, 4, 8, 16, 32, 64, 128, 256)]  # fmt: skip
        return min(
            replicas_needed(20, e.requests_per_s, 0.7) * inst.price_usd_per_hour
            for e in estimates
            if not isinstance(e, str) and e.latency_p99_s <= 40
        )

    assert static_cost("tight-1") < static_cost("roomy-1")
    plans = make_plan(spec, catalog=catalog, calibration=Calibration()).plans
    assert [p.instance for p in plans] == ["roomy-1", "tight-1"]
    roomy, tight = plans
    assert isinstance(tight, ServeOption) and isinstance(roomy, ServeOption)
    assert roomy.batch > 8 * 4 and tight.batch == 15 and tight.bottleneck == "capacity"
