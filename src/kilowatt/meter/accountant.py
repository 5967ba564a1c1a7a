"""Turns a measurement into what it cost: joules, dollars and grams CO2e, each with its method.

>>> acct = Accountant(price_usd_per_hour=7.2, grid_intensity_gco2e_per_kwh=400.0, pue=1.5)
>>> bill = acct.account(Measurement(duration_s=1800.0, energy_j=3.6e6, method="measured-nvml"))
>>> bill.cost_usd, bill.carbon_gco2e
(3.6, 600.0)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from kilowatt.errors import SpecError
from kilowatt.meter.energy import Measurement
from kilowatt.units import SECONDS_PER_HOUR, carbon_gco2e

__all__ = ["Account", "Accountant"]


@dataclass(frozen=True)
class Account:
    """The bill of one window.

    Attributes:
        duration_s: wall seconds.
        energy_j: joules attributed to the job.
        energy_method: how the joules were obtained (``measured-nvml``, ``estimated-cpu-time``...).
        cost_usd: instance time x its hourly price (the share of the instance the job holds).
        cost_method: ``catalog-price:<instance>`` or ``given-price``.
        carbon_gco2e: joules x grid intensity x PUE.
        carbon_method: the energy method plus where the intensity came from.
    """

    duration_s: float
    energy_j: float
    energy_method: str
    cost_usd: float
    cost_method: str
    carbon_gco2e: float
    carbon_method: str

    def as_dict(self) -> dict[str, Any]:
        """Plain values for logging."""
        return asdict(self)


class Accountant:
    """Prices measurements with an hourly price, a grid intensity and a PUE.

    Args:
        price_usd_per_hour: price of the instance the job runs on.
        grid_intensity_gco2e_per_kwh: carbon intensity of the grid that powers it.
        pue: the facility's power usage effectiveness (>= 1).
        instance_share: fraction of the instance the job holds (e.g. 2 of 8 GPUs = 0.25).
        price_source: recorded as ``cost_method``.
        carbon_source: recorded in ``carbon_method``.
    """

    def __init__(
        self,
        price_usd_per_hour: float,
        grid_intensity_gco2e_per_kwh: float,
        pue: float = 1.0,
        instance_share: float = 1.0,
        price_source: str = "given-price",
        carbon_source: str = "given-intensity",
    ) -> None:
        _check("price_usd_per_hour", price_usd_per_hour, minimum=0.0)
        _check("grid_intensity_gco2e_per_kwh", grid_intensity_gco2e_per_kwh, minimum=0.0)
        _check("pue", pue, minimum=1.0)
        if not 0.0 < instance_share <= 1.0:
            raise SpecError(f"instance_share must be in (0, 1], got {instance_share}")
        self.price_usd_per_hour = price_usd_per_hour
        self.grid_intensity_gco2e_per_kwh = grid_intensity_gco2e_per_kwh
        self.pue = pue
        self.instance_share = instance_share
        self.price_source = price_source
        self.carbon_source = carbon_source

    @classmethod
    def from_catalog(
        cls,
        catalog: Any = None,
        instance: str = "local-cpu",
        region: str = "local",
        price_usd_per_hour: float | None = None,
        instance_share: float = 1.0,
    ) -> Accountant:
        """Price from the catalog ``instance`` (unless ``price_usd_per_hour`` is given),
        intensity and PUE from the catalog ``region``.

        Raises:
            CatalogLookupError: the instance or region is not in the catalog.
        """
        if catalog is None:
            from kilowatt.catalog import load_catalog

            catalog = load_catalog()
        zone = catalog.region(region)
        if price_usd_per_hour is None:
            price_usd_per_hour = float(catalog.instance(instance).price_usd_per_hour)
            price_source = f"catalog-price:{instance}"
        else:
            price_source = "given-price"
        return cls(
            price_usd_per_hour=price_usd_per_hour,
            grid_intensity_gco2e_per_kwh=float(zone.grid_intensity_gco2e_per_kwh),
            pue=float(zone.pue),
            instance_share=instance_share,
            price_source=price_source,
            carbon_source=f"catalog-region:{region}",
        )

    def account(self, measurement: Measurement) -> Account:
        """The bill for ``measurement``."""
        hours = measurement.duration_s / SECONDS_PER_HOUR
        return Account(
            duration_s=measurement.duration_s,
            energy_j=measurement.energy_j,
            energy_method=measurement.method,
            cost_usd=hours * self.price_usd_per_hour * self.instance_share,
            cost_method=self.price_source,
            carbon_gco2e=carbon_gco2e(
                measurement.energy_j, self.grid_intensity_gco2e_per_kwh, pue=self.pue
            ),
            carbon_method=f"{measurement.method}@{self.carbon_source}",
        )


def _check(name: str, value: float, minimum: float) -> None:
    if value < minimum:
        raise SpecError(f"{name} must be >= {minimum}, got {value}")
