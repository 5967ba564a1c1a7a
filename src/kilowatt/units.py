"""Unit conversions at the edges: joules, kilowatt-hours and grams CO2e.

Inside kilowatt every figure is SI (seconds, bytes, FLOP, joules, watts, grams CO2e)
and money is USD; these helpers are the one place that converts.
"""

from __future__ import annotations

__all__ = ["J_PER_KWH", "SECONDS_PER_HOUR", "carbon_gco2e", "j_to_kwh"]

J_PER_KWH = 3.6e6
SECONDS_PER_HOUR = 3600.0


def j_to_kwh(energy_j: float) -> float:
    """Joules to kilowatt-hours."""
    return energy_j / J_PER_KWH


def carbon_gco2e(energy_j: float, intensity_gco2e_per_kwh: float, pue: float = 1.0) -> float:
    """Grams CO2e of ``energy_j`` drawn by IT equipment in a facility with ``pue``.

    >>> carbon_gco2e(3.6e6, 400.0, pue=1.5)
    600.0
    """
    if pue < 1.0:
        raise ValueError(f"pue must be >= 1.0 (facility energy / IT energy), got {pue}")
    return j_to_kwh(energy_j) * pue * intensity_gco2e_per_kwh
