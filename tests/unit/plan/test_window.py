"""When to run: the start window under an hourly forecast, on forecasts whose answer is
known by hand, and the errors a forecast that cannot answer gives."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from kilowatt.catalog.forecast import HourlyForecast, load_forecast_csv
from kilowatt.errors import CatalogError, PlanInfeasible, SpecError
from kilowatt.plan import make_plan
from kilowatt.plan.window import best_window, window_footprint

T0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
KWH = 3.6e6


def _hours(n: int) -> dt.datetime:
    return T0 + dt.timedelta(hours=n)


# A day: dirty (500 g/kWh) except a solar dip at 12-15h (100); power is cheap at night
# (0.05 $/kWh, hours 0-5) and dear by day (0.30).
CARBON = tuple(100.0 if 12 <= h < 16 else 500.0 for h in range(24))
PRICE = tuple(0.05 if h < 6 else 0.30 for h in range(24))
DAY = HourlyForecast("eu-north-1", T0, CARBON, PRICE, "test")


def test_carbon_window_is_the_solar_dip_and_the_saving_is_exact() -> None:
    # 3 kWh over 3 h: now (hours 1-4) emits 3 x 500 g; the dip (12-15h) 3 x 100 g.
    choice = best_window(
        DAY, energy_j=3 * KWH, duration_s=3 * 3600, now=_hours(1), deadline=_hours(20)
    )
    assert choice.start == _hours(12)
    assert choice.carbon_gco2e == pytest.approx(300.0)
    assert choice.now_carbon_gco2e == pytest.approx(1500.0)
    assert choice.saving_fraction == pytest.approx(0.8)
    assert "start at 2026-12-01 12:00Z" in choice.sentence()
    assert "80% less" in choice.sentence()


def test_cost_window_is_the_night_and_ignores_carbon() -> None:
    # The carbon-best window (the dip) is day-priced; the cheapest is the night.
    choice = best_window(
        DAY,
        energy_j=3 * KWH,
        duration_s=3 * 3600,
        now=_hours(0) + dt.timedelta(minutes=30),
        deadline=_hours(23),
        minimise="cost",
    )
    # now (00:30-03:30) is already all night-priced: nothing to gain, so it starts now
    assert choice.start == _hours(0) + dt.timedelta(minutes=30)
    assert choice.cost_usd == pytest.approx(3 * 0.05)
    assert choice.saving_fraction == pytest.approx(0.0)


def test_not_before_moves_the_window_past_the_dip() -> None:
    choice = best_window(
        DAY,
        energy_j=2 * KWH,
        duration_s=2 * 3600,
        now=_hours(0),
        not_before=_hours(14),
        deadline=_hours(23),
    )
    assert choice.start == _hours(14)  # 14-16h, the rest of the dip
    assert choice.carbon_gco2e == pytest.approx(200.0)


def test_fractional_hours_are_weighed_by_overlap() -> None:
    # 1.5 h from 11:30: half an hour at 500 g, an hour at 100 g, 1 kWh per hour.
    carbon, cost = window_footprint(
        DAY, _hours(11) + dt.timedelta(minutes=30), 1.5 * 3600, 1.5 * KWH
    )
    assert carbon == pytest.approx(0.5 * 500 + 1.0 * 100)
    assert cost == pytest.approx(1.5 * 0.30)


def test_a_forecast_that_ends_before_the_deadline_is_an_error() -> None:
    with pytest.raises(SpecError, match=r"ends at 2026-12-02T00:00Z, before the deadline"):
        best_window(DAY, energy_j=KWH, duration_s=3600, now=T0, deadline=_hours(30))


def test_a_job_longer_than_its_window_is_infeasible() -> None:
    with pytest.raises(PlanInfeasible, match=r"runs 5.0 h but only 2.0 h"):
        best_window(DAY, energy_j=KWH, duration_s=5 * 3600, now=_hours(3), deadline=_hours(5))


def test_cost_without_prices_says_to_give_them() -> None:
    carbon_only = HourlyForecast("x", T0, CARBON, None, "api")
    with pytest.raises(SpecError, match="has no prices"):
        best_window(
            carbon_only, energy_j=KWH, duration_s=3600, now=T0, deadline=_hours(5), minimise="cost"
        )


def _write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("region,hour,gco2e_per_kwh,price_usd_per_kwh\n" + "\n".join(rows) + "\n")
    return path


def test_csv_forecast_reads_one_region_in_hour_order(tmp_path: Path) -> None:
    csv = _write_csv(
        tmp_path / "f.csv",
        [
            "b,2026-12-01T01:00:00Z,20,0.2",
            "a,2026-12-01T01:00:00Z,200,0.1",
            "a,2026-12-01T00:00:00Z,300,0.3",
        ],
    )
    forecast = load_forecast_csv(csv, "a")
    assert (forecast.start, forecast.gco2e_per_kwh, forecast.price_usd_per_kwh) == (
        T0,
        (300.0, 200.0),
        (0.3, 0.1),
    )


def test_csv_forecast_with_a_gap_names_the_line(tmp_path: Path) -> None:
    csv = _write_csv(
        tmp_path / "f.csv", ["a,2026-12-01T00:00:00Z,300,0.3", "a,2026-12-01T02:00:00Z,200,0.1"]
    )
    with pytest.raises(CatalogError, match=r"line 3: hour 2026-12-01T02:00Z does not follow"):
        load_forecast_csv(csv, "a")


def test_plan_with_a_schedule_picks_the_window_and_says_the_saving(tmp_path: Path) -> None:
    rows = [f"local,{_hours(h).isoformat()},{CARBON[h]},{PRICE[h]}" for h in range(24)]
    csv = _write_csv(tmp_path / "grid.csv", rows)
    spec = {
        "model": {"architecture": "generic", "params": 1.2e7, "forward_flops_per_sample": 1.8e9},
        "train": {"samples": 50000, "epochs": 10, "precision": "fp32"},
        "constraints": {"instances": ["local-cpu"]},
        "schedule": {"forecast_csv": str(csv), "deadline": _hours(23).isoformat()},
    }
    result = make_plan(spec, now=_hours(2))
    assert result.schedule is not None
    assert result.recommendation.time_s < 4 * 3600  # fits within the 4-hour dip
    assert result.schedule.start == _hours(12).isoformat()
    assert result.schedule.saving_fraction == pytest.approx(0.8)
    assert any(
        line.startswith("when to run: start at 2026-12-01 12:00Z") for line in result.explanation
    )


def test_schedule_needs_exactly_one_forecast() -> None:
    spec = {
        "model": {"architecture": "generic", "params": 1e6, "forward_flops_per_sample": 1e9},
        "train": {"samples": 5e4},
        "schedule": {"deadline": "2026-12-01T10:00:00Z"},
    }
    with pytest.raises(SpecError, match="exactly one of forecast_csv or forecast_zone"):
        make_plan(spec)
