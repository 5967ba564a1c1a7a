"""When to run: the start time within a deadline that minimises a job's carbon or
electricity cost under an hourly forecast, and what it saves against starting now.

The job draws its energy evenly over its duration; each forecast hour it overlaps
contributes its share of the energy at that hour's carbon intensity and price. Candidate
starts are the earliest allowed moment and every forecast hour boundary after it whose
window still ends by the deadline.

>>> import datetime as dt
>>> from kilowatt.catalog.forecast import HourlyForecast
>>> t0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
>>> night = HourlyForecast("x", t0, (400, 400, 100, 100, 400), None, "example")
>>> choice = best_window(night, energy_j=7.2e6, duration_s=7200, now=t0,
...                      deadline=t0 + dt.timedelta(hours=5))
>>> choice.start.hour, round(choice.saving_fraction, 2)
(2, 0.75)
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Literal

from kilowatt.catalog.forecast import HourlyForecast
from kilowatt.errors import PlanInfeasible, SpecError
from kilowatt.units import J_PER_KWH

__all__ = ["Minimise", "WindowChoice", "best_window", "window_footprint"]

Minimise = Literal["carbon", "cost"]
_HOUR_S = 3600.0


@dataclass(frozen=True)
class WindowChoice:
    """The chosen start, its footprint, and the footprint of starting now."""

    minimise: Minimise
    start: dt.datetime
    end: dt.datetime
    carbon_gco2e: float
    cost_usd: float | None
    now_carbon_gco2e: float
    now_cost_usd: float | None
    region: str
    source: str

    @property
    def saving_fraction(self) -> float:
        """Share of the objective saved against starting at once."""
        chosen, now = self._objective()
        return 1.0 - chosen / now if now > 0 else 0.0

    def sentence(self) -> str:
        """One line for the plan's explanation."""
        chosen, now = self._objective()
        unit = "kg CO2e" if self.minimise == "carbon" else "USD of electricity"
        scale = 1000.0 if self.minimise == "carbon" else 1.0
        return (
            f"when to run: start at {self.start:%Y-%m-%d %H:%M}Z (ends {self.end:%Y-%m-%d %H:%M}Z) "
            f"for the least {self.minimise} under the {self.region} forecast ({self.source}): "
            f"{chosen / scale:,.2f} {unit} against {now / scale:,.2f} starting now, "
            f"{self.saving_fraction:.0%} less"
        )

    def _objective(self) -> tuple[float, float]:
        if self.minimise == "carbon":
            return self.carbon_gco2e, self.now_carbon_gco2e
        assert self.cost_usd is not None and self.now_cost_usd is not None
        return self.cost_usd, self.now_cost_usd


def window_footprint(
    forecast: HourlyForecast, start: dt.datetime, duration_s: float, energy_j: float
) -> tuple[float, float | None]:
    """Carbon (g) and electricity cost (USD, ``None`` without prices) of ``energy_j``
    drawn evenly from ``start`` for ``duration_s``."""
    kwh_per_s = energy_j / J_PER_KWH / duration_s if duration_s > 0 else 0.0
    first = forecast.hour_index(start)
    last = first + duration_s / _HOUR_S
    carbon, cost = 0.0, 0.0
    for hour in range(math.floor(first), math.ceil(last)):
        overlap_s = (min(last, hour + 1) - max(first, hour)) * _HOUR_S
        kwh = overlap_s * kwh_per_s
        carbon += kwh * forecast.gco2e_per_kwh[hour]
        if forecast.price_usd_per_kwh is not None:
            cost += kwh * forecast.price_usd_per_kwh[hour]
    return carbon, (cost if forecast.price_usd_per_kwh is not None else None)


def best_window(
    forecast: HourlyForecast,
    *,
    energy_j: float,
    duration_s: float,
    now: dt.datetime,
    deadline: dt.datetime,
    not_before: dt.datetime | None = None,
    minimise: Minimise = "carbon",
) -> WindowChoice:
    """The start in ``[max(now, not_before), deadline - duration]`` with the least
    ``minimise`` (the earliest among equals).

    Raises:
        SpecError: the forecast does not cover the window, or has no prices for ``cost``.
        PlanInfeasible: the job does not fit between its earliest start and the deadline.
    """
    earliest = max(now, not_before) if not_before else now
    if minimise == "cost" and forecast.price_usd_per_kwh is None:
        raise SpecError(
            f"the forecast from {forecast.source} has no prices; minimise carbon, or give a "
            "CSV with a price_usd_per_kwh column"
        )
    if earliest < forecast.start:
        raise SpecError(
            f"the {forecast.region} forecast starts at {forecast.start:%Y-%m-%d %H:%M}Z, after "
            f"the earliest start {earliest:%Y-%m-%d %H:%M}Z; give a forecast from now on"
        )
    forecast.require_until(deadline)
    latest = deadline - dt.timedelta(seconds=duration_s)
    if latest < earliest:
        raise PlanInfeasible(
            f"the job runs {duration_s / _HOUR_S:.1f} h but only "
            f"{(deadline - earliest).total_seconds() / _HOUR_S:.1f} h lie between its earliest "
            f"start {earliest:%Y-%m-%d %H:%M}Z and the deadline {deadline:%Y-%m-%d %H:%M}Z"
        )
    scored = []
    for start in _candidate_starts(forecast, earliest, latest):
        carbon, cost = window_footprint(forecast, start, duration_s, energy_j)
        value = carbon if minimise == "carbon" else cost
        assert value is not None
        scored.append((value, start, carbon, cost))
    _, start, carbon, cost = min(scored, key=lambda item: (item[0], item[1]))
    now_carbon, now_cost = window_footprint(forecast, earliest, duration_s, energy_j)
    return WindowChoice(
        minimise=minimise,
        start=start,
        end=start + dt.timedelta(seconds=duration_s),
        carbon_gco2e=carbon,
        cost_usd=cost,
        now_carbon_gco2e=now_carbon,
        now_cost_usd=now_cost,
        region=forecast.region,
        source=forecast.source,
    )


def _candidate_starts(
    forecast: HourlyForecast, earliest: dt.datetime, latest: dt.datetime
) -> list[dt.datetime]:
    starts = [earliest]
    hour = forecast.start + dt.timedelta(hours=math.floor(forecast.hour_index(earliest)) + 1)
    while hour <= latest:
        starts.append(hour)
        hour += dt.timedelta(hours=1)
    return starts
