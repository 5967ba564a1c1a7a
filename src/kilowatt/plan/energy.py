"""Energy and carbon: accelerator power at the expected utilisation, host power, PUE and
grid intensity."""

from __future__ import annotations

from dataclasses import dataclass

from kilowatt.catalog import Region
from kilowatt.units import carbon_gco2e

__all__ = ["Footprint", "accelerator_power_w", "footprint"]


def accelerator_power_w(tdp_w: float, idle_w: float, busy_fraction: float) -> float:
    """Average draw: idle plus the dynamic range scaled by the share of time computing.

    >>> accelerator_power_w(400.0, 60.0, 0.5)
    230.0
    """
    busy = min(max(busy_fraction, 0.0), 1.0)
    return idle_w + (tdp_w - idle_w) * busy


@dataclass(frozen=True)
class Footprint:
    """Energy at the facility meter (IT x PUE) and its carbon, with the average IT power."""

    power_w: float
    energy_j: float
    carbon_gco2e: float


def footprint(it_power_w: float, wall_s: float, region: Region) -> Footprint:
    """Facility energy and carbon of drawing ``it_power_w`` for ``wall_s`` in ``region``.

    >>> from kilowatt.catalog import load_catalog
    >>> f = footprint(1000.0, 3600.0, load_catalog().region("local"))
    >>> f.energy_j, f.carbon_gco2e
    (3600000.0, 480.0)
    """
    it_energy_j = it_power_w * wall_s
    return Footprint(
        power_w=it_power_w,
        energy_j=it_energy_j * region.pue,
        carbon_gco2e=carbon_gco2e(it_energy_j, region.grid_intensity_gco2e_per_kwh, region.pue),
    )
