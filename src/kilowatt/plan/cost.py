"""Cost of a plan: accelerator-hours at on-demand, spot, committed and mixed prices, plus
storage for data and checkpoints and egress."""

from __future__ import annotations

from dataclasses import dataclass

from kilowatt.catalog import Instance, Region
from kilowatt.units import SECONDS_PER_HOUR

__all__ = ["HOURS_PER_MONTH", "PriceBook", "storage_cost_usd"]

HOURS_PER_MONTH = 730.0


@dataclass(frozen=True)
class PriceBook:
    """Hourly prices of one instance under each pricing model (USD per instance-hour)."""

    on_demand: float
    spot: float
    committed: float

    @classmethod
    def of(cls, instance: Instance) -> PriceBook:
        price = instance.price_usd_per_hour
        return cls(
            on_demand=price,
            spot=price * (1.0 - (instance.spot_discount or 0.0)),
            committed=price * (1.0 - (instance.commit_1y_discount or 0.0)),
        )

    def mixed(self, committed_fraction: float) -> float:
        """Blended hourly price: ``committed_fraction`` committed baseline, the rest spot."""
        return committed_fraction * self.committed + (1.0 - committed_fraction) * self.spot

    def compute_cost_usd(self, per_hour_usd: float, instances: int, wall_s: float) -> float:
        """``instances`` x ``wall_s`` at ``per_hour_usd``."""
        return per_hour_usd * instances * wall_s / SECONDS_PER_HOUR


def storage_cost_usd(stored_gb: float, wall_s: float, region: Region) -> float:
    """Object storage for ``stored_gb`` held for ``wall_s`` (at least one day is billed)."""
    months = max(wall_s, 86400.0) / SECONDS_PER_HOUR / HOURS_PER_MONTH
    return stored_gb * region.storage_usd_per_gb_month * months
