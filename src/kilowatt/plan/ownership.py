"""Buy versus rent: the yearly cost of owning a system (purchase price amortised, power at
the site's PUE and tariff, hosting and operations) against renting the same accelerators,
and the utilisation at which owning breaks even with each pay-as-you-go cloud option.

Owning costs ``F + v·u·8760`` a year at utilisation ``u``: ``F`` holds amortisation,
hosting, operations and the idle draw of every hour, ``v`` the extra power of a busy hour.
Renting on demand or spot costs ``r·u·8760``. They meet at ``u* = F / ((r - v)·8760)``;
above ``u*`` owning is cheaper. A one-year commitment is paid for every hour, so it is
compared at the given utilisation instead.

>>> from kilowatt.catalog import load_catalog
>>> from kilowatt.spec.plan import Ownership
>>> catalog = load_catalog()
>>> terms = Ownership(system="dgx-a100", tariff_usd_per_kwh=0.10, pue=1.5, years=4,
...                   hosting_usd_per_kw_month=0, operations_fraction_per_year=0)
>>> cost = ownership_cost(catalog.purchase("dgx-a100"), terms, catalog.default_pue)
>>> round(cost.fixed_usd_per_year)  # 199000/4 + 1.625 kW idle x 8760 h x 1.5 x $0.10
51885
"""

from __future__ import annotations

from dataclasses import dataclass

from kilowatt.catalog import Catalog, Instance, PurchaseOption
from kilowatt.plan.result import OwnershipComparison, PlanResult, RentOption
from kilowatt.spec.plan import Ownership

__all__ = ["OwnershipCost", "attach_ownership", "buy_vs_rent", "ownership_cost"]

HOURS_PER_YEAR = 8760.0


@dataclass(frozen=True)
class OwnershipCost:
    """Yearly cost of owning one system, split into what use does and does not change."""

    amortisation_usd_per_year: float
    hosting_usd_per_year: float
    operations_usd_per_year: float
    idle_energy_usd_per_year: float
    busy_extra_usd_per_hour: float
    """Electricity of a busy hour beyond the idle draw (PUE included)."""

    @property
    def fixed_usd_per_year(self) -> float:
        return (
            self.amortisation_usd_per_year
            + self.hosting_usd_per_year
            + self.operations_usd_per_year
            + self.idle_energy_usd_per_year
        )

    def usd_per_year(self, utilization: float) -> float:
        """Total yearly cost when busy ``utilization`` of the hours."""
        return self.fixed_usd_per_year + self.busy_extra_usd_per_hour * utilization * HOURS_PER_YEAR


def ownership_cost(system: PurchaseOption, terms: Ownership, default_pue: float) -> OwnershipCost:
    """Yearly cost of owning ``system`` under ``terms``."""
    pue = terms.pue or default_pue
    rate, years = terms.cost_of_capital, terms.years
    # An annuity spreads price and interest evenly; without interest it is price / years.
    annual = rate / (1.0 - (1.0 + rate) ** -years) if rate > 0 else 1.0 / years
    return OwnershipCost(
        amortisation_usd_per_year=system.price_usd * annual,
        hosting_usd_per_year=system.power_kw * terms.hosting_usd_per_kw_month * 12.0,
        operations_usd_per_year=system.price_usd * terms.operations_fraction_per_year,
        idle_energy_usd_per_year=system.idle_kw * HOURS_PER_YEAR * pue * terms.tariff_usd_per_kwh,
        busy_extra_usd_per_hour=(system.power_kw - system.idle_kw) * pue * terms.tariff_usd_per_kwh,
    )


def buy_vs_rent(terms: Ownership, catalog: Catalog) -> list[RentOption]:
    """Owning ``terms.system`` against every cloud instance with its accelerator, under
    on-demand, spot and one-year committed prices (cheapest rent first); each option is
    scaled to the system's accelerator count."""
    system = catalog.purchase(terms.system)
    own = ownership_cost(system, terms, catalog.default_pue)
    own_year = own.usd_per_year(terms.utilization)
    rows = []
    for inst in catalog.instances:
        if inst.accelerator != system.accelerator or inst.cloud == "local":
            continue
        scale = system.accelerator_count / inst.accelerator_count
        for pricing, hourly, pay_as_you_go in _rent_prices(inst.price_usd_per_hour, inst):
            rent_h = hourly * scale
            used_hours = terms.utilization * HOURS_PER_YEAR if pay_as_you_go else HOURS_PER_YEAR
            rent_year = rent_h * used_hours
            rows.append(
                RentOption(
                    instance=inst.name,
                    cloud=inst.cloud,
                    pricing=pricing,
                    rent_usd_per_hour=rent_h,
                    rent_usd_per_year=rent_year,
                    break_even_utilization=(_break_even(own, rent_h) if pay_as_you_go else None),
                    cheaper="buy" if own_year < rent_year else "rent",
                )
            )
    return sorted(rows, key=lambda row: row.rent_usd_per_year)


def _rent_prices(on_demand: float, inst: Instance) -> list[tuple[str, float, bool]]:
    prices = [("on_demand", on_demand, True)]
    if inst.spot_discount is not None:
        prices.append(("spot", on_demand * (1.0 - inst.spot_discount), True))
    if inst.commit_1y_discount is not None:
        prices.append(("committed", on_demand * (1.0 - inst.commit_1y_discount), False))
    return prices


def _break_even(own: OwnershipCost, rent_usd_per_hour: float) -> float | None:
    margin = rent_usd_per_hour - own.busy_extra_usd_per_hour
    if margin <= 0:
        return None
    utilization = own.fixed_usd_per_year / (margin * HOURS_PER_YEAR)
    return utilization if utilization <= 1.0 else None


def attach_ownership(result: PlanResult, terms: Ownership, catalog: Catalog) -> PlanResult:
    """``result`` with the buy-versus-rent comparison and a sentence on the break-even."""
    system = catalog.purchase(terms.system)
    own = ownership_cost(system, terms, catalog.default_pue)
    busy_hours = terms.utilization * HOURS_PER_YEAR
    comparison = OwnershipComparison(
        system=system.name,
        price_usd=system.price_usd,
        price_is_estimate=system.price_is_estimate,
        utilization=terms.utilization,
        own_usd_per_year=own.usd_per_year(terms.utilization),
        amortisation_usd_per_year=own.amortisation_usd_per_year,
        hosting_usd_per_year=own.hosting_usd_per_year,
        operations_usd_per_year=own.operations_usd_per_year,
        energy_usd_per_year=own.idle_energy_usd_per_year + own.busy_extra_usd_per_hour * busy_hours,
        options=buy_vs_rent(terms, catalog),
    )
    return result.model_copy(
        update={
            "ownership": comparison,
            "explanation": [*result.explanation, _ownership_sentence(comparison, terms, catalog)],
        }
    )


def _ownership_sentence(comparison: OwnershipComparison, terms: Ownership, catalog: Catalog) -> str:
    estimate = " (estimated price)" if comparison.price_is_estimate else ""
    even = [
        f"{o.break_even_utilization:.0%} vs {o.instance} {o.pricing.replace('_', '-')}"
        if o.break_even_utilization is not None
        else f"never vs {o.instance} {o.pricing.replace('_', '-')}"
        for o in comparison.options
        if o.pricing != "committed"
    ]
    pue = terms.pue or catalog.default_pue
    return (
        f"buy versus rent: owning {comparison.system}{estimate} costs "
        f"${comparison.own_usd_per_year:,.0f}/year at {comparison.utilization:.0%} use "
        f"({terms.years:g}-year amortisation, ${terms.tariff_usd_per_kwh:g}/kWh at PUE "
        f"{pue:g}, hosting ${terms.hosting_usd_per_kw_month:g}/kW-month, "
        f"operations {terms.operations_fraction_per_year:.0%}/year); it breaks even at "
        + ", ".join(even)
    )
