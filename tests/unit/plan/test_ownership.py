"""Buy versus rent: the yearly cost of owning, the break-even utilisation against each
cloud option, checked against arithmetic done by hand."""

from __future__ import annotations

import pytest

from kilowatt.catalog import load_catalog
from kilowatt.errors import CatalogLookupError
from kilowatt.plan import make_plan
from kilowatt.plan.ownership import buy_vs_rent, ownership_cost
from kilowatt.spec.plan import Ownership

# DGX A100 at $199,000 over 4 years, 6.5 kW max (idle a quarter: 1.625 kW), PUE 1.5,
# $0.10/kWh, no hosting or operations: fixed = 49,750 + 1.625 x 8760 x 1.5 x 0.1
# = 51,885.25 a year; a busy hour adds 4.875 kW x 1.5 x $0.10 = $0.73125.
TERMS = Ownership(
    system="dgx-a100",
    years=4,
    utilization=0.5,
    tariff_usd_per_kwh=0.10,
    pue=1.5,
    hosting_usd_per_kw_month=0,
    operations_fraction_per_year=0,
)
FIXED = 49_750 + 1.625 * 8760 * 1.5 * 0.1
BUSY = 4.875 * 1.5 * 0.1


def test_ownership_cost_splits_fixed_and_busy_costs() -> None:
    catalog = load_catalog()
    cost = ownership_cost(catalog.purchase("dgx-a100"), TERMS, catalog.default_pue)
    assert cost.fixed_usd_per_year == pytest.approx(FIXED)
    assert cost.busy_extra_usd_per_hour == pytest.approx(BUSY)
    assert cost.usd_per_year(0.5) == pytest.approx(FIXED + BUSY * 0.5 * 8760)


def test_hosting_operations_and_interest_add_what_they_say() -> None:
    catalog = load_catalog()
    system = catalog.purchase("dgx-a100")
    dearer = TERMS.model_copy(
        update={"hosting_usd_per_kw_month": 100, "operations_fraction_per_year": 0.1}
    )
    cost = ownership_cost(system, dearer, catalog.default_pue)
    assert cost.hosting_usd_per_year == pytest.approx(6.5 * 100 * 12)
    assert cost.operations_usd_per_year == pytest.approx(19_900)
    # 5% a year over 4 years: the annuity factor 0.05 / (1 - 1.05**-4) = 0.28201
    with_interest = ownership_cost(
        system, TERMS.model_copy(update={"cost_of_capital": 0.05}), catalog.default_pue
    )
    assert with_interest.amortisation_usd_per_year == pytest.approx(199_000 * 0.282012, rel=1e-5)


def test_break_even_against_on_demand_is_where_owning_and_renting_cost_the_same() -> None:
    rows = {(r.instance, r.pricing): r for r in buy_vs_rent(TERMS, load_catalog())}
    on_demand = rows[("p4d.24xlarge", "on_demand")]
    # p4d.24xlarge is the same 8 x A100-40GB at $32.7726/h
    assert on_demand.rent_usd_per_hour == pytest.approx(32.7726)
    expected = FIXED / ((32.7726 - BUSY) * 8760)
    assert on_demand.break_even_utilization == pytest.approx(expected)
    assert expected == pytest.approx(0.18486, abs=1e-4)
    # at 50% use owning wins against on-demand
    assert on_demand.cheaper == "buy"
    assert on_demand.rent_usd_per_year == pytest.approx(32.7726 * 0.5 * 8760)


def test_a_commitment_is_paid_every_hour_and_has_no_break_even() -> None:
    rows = {(r.instance, r.pricing): r for r in buy_vs_rent(TERMS, load_catalog())}
    committed = rows[("p4d.24xlarge", "committed")]
    assert committed.break_even_utilization is None
    assert committed.rent_usd_per_year == pytest.approx(32.7726 * (1 - 0.35) * 8760)


def test_one_gpu_instances_are_scaled_to_the_systems_eight() -> None:
    rows = {(r.instance, r.pricing): r for r in buy_vs_rent(TERMS, load_catalog())}
    one = load_catalog().instance("a2-highgpu-1g")
    assert rows[("a2-highgpu-1g", "on_demand")].rent_usd_per_hour == pytest.approx(
        8 * one.price_usd_per_hour
    )


def test_plan_shows_break_even_for_each_cloud_option() -> None:
    result = make_plan(
        {
            "model": {"params": 7e9, "layers": 32, "hidden": 4096, "heads": 32, "seq_len": 4096},
            "serve": {"requests_per_s": 2, "p99_latency_s": 30},
            "buy": TERMS.model_dump(),
        }
    )
    assert result.ownership is not None
    clouds = {o.cloud for o in result.ownership.options}
    assert clouds == {"aws", "gcp", "azure"}
    sentence = result.explanation[-1]
    assert sentence.startswith("buy versus rent: owning dgx-a100 costs $")
    assert "18% vs p4d.24xlarge on-demand" in sentence


def test_an_unknown_system_suggests_names() -> None:
    with pytest.raises(CatalogLookupError, match=r"unknown purchase option 'dgx'.*dgx-a100"):
        buy_vs_rent(TERMS.model_copy(update={"system": "dgx"}), load_catalog())
