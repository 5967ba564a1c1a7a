"""Attach a start window to a training plan's recommendation (the spec's ``schedule:``)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from kilowatt.catalog.forecast import ElectricityMapsClient, HourlyForecast, load_forecast_csv
from kilowatt.plan.result import PlanResult, ScheduleChoice, TrainOption
from kilowatt.plan.window import best_window
from kilowatt.spec.plan import Schedule

__all__ = ["load_schedule_forecast", "schedule_recommendation"]


def load_schedule_forecast(schedule: Schedule, region: str) -> HourlyForecast:
    """The forecast ``schedule`` names: its CSV (rows of ``region``) or the API zone."""
    if schedule.forecast_csv is not None:
        return load_forecast_csv(Path(schedule.forecast_csv), schedule.region or region)
    assert schedule.forecast_zone is not None
    return ElectricityMapsClient.from_env().forecast(schedule.forecast_zone)


def schedule_recommendation(result: PlanResult, schedule: Schedule, now: dt.datetime) -> PlanResult:
    """``result`` with the window that minimises ``schedule.minimise`` for its
    recommendation, and a sentence saying what it saves against starting now."""
    best = result.recommendation
    assert isinstance(best, TrainOption)
    forecast = load_schedule_forecast(schedule, best.region)
    choice = best_window(
        forecast,
        energy_j=best.energy_j,
        duration_s=best.time_s,
        now=now,
        deadline=schedule.deadline,
        not_before=schedule.not_before,
        minimise=schedule.minimise,
    )
    chosen = ScheduleChoice(
        minimise=choice.minimise,
        start=choice.start.isoformat(),
        end=choice.end.isoformat(),
        carbon_gco2e=choice.carbon_gco2e,
        carbon_gco2e_now=choice.now_carbon_gco2e,
        electricity_usd=choice.cost_usd,
        electricity_usd_now=choice.now_cost_usd,
        saving_fraction=choice.saving_fraction,
        region=choice.region,
        source=choice.source,
    )
    explanation = [*result.explanation, choice.sentence()]
    return result.model_copy(update={"schedule": chosen, "explanation": explanation})
