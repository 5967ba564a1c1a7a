"""Unit conversions at the edges: joules, kilowatt-hours, dollars and grams CO2e.

Inside kilowatt every figure is SI (seconds, bytes, FLOP, joules, watts, grams CO2e)
and money is USD; these helpers are the one place that converts.
"""

from __future__ import annotations

__all__ = [
    "GIB",
    "J_PER_KWH",
    "SECONDS_PER_HOUR",
    "bytes_to_gib",
    "carbon_gco2e",
    "energy_cost_usd",
    "gib_to_bytes",
    "j_to_kwh",
    "kwh_to_j",
]

J_PER_KWH = 3.6e6
SECONDS_PER_HOUR = 3600.0
GIB = 1024**3


def j_to_kwh(energy_j: float) -> float:
    """Joules to kilowatt-hours."""
    return energy_j / J_PER_KWH


def kwh_to_j(energy_kwh: float) -> float:
    """Kilowatt-hours to joules."""
    return energy_kwh * J_PER_KWH


def energy_cost_usd(energy_j: float, price_usd_per_kwh: float) -> float:
    """Cost of ``energy_j`` at an electricity price in USD per kWh."""
    return j_to_kwh(energy_j) * price_usd_per_kwh


def carbon_gco2e(energy_j: float, intensity_gco2e_per_kwh: float, pue: float = 1.0) -> float:
    """Grams CO2e of ``energy_j`` drawn by IT equipment in a facility with ``pue``.

    >>> carbon_gco2e(3.6e6, 400.0, pue=1.5)
    600.0
    """
    if pue < 1.0:
        raise ValueError(f"pue must be >= 1.0 (facility energy / IT energy), got {pue}")
    return j_to_kwh(energy_j) * pue * intensity_gco2e_per_kwh


def bytes_to_gib(n_bytes: float) -> float:
    """Bytes to GiB (2**30 bytes)."""
    return n_bytes / GIB


def gib_to_bytes(gib: float) -> float:
    """GiB (2**30 bytes) to bytes."""
    return gib * GIB
