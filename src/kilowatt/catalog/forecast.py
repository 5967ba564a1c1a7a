"""Hourly grid forecasts: carbon intensity and electricity price by region and hour.

From a CSV file (one row per region and hour, UTC)::

    region,hour,gco2e_per_kwh,price_usd_per_kwh
    eu-north-1,2026-12-01T00:00:00Z,31,0.052
    eu-north-1,2026-12-01T01:00:00Z,29,0.048

or from the Electricity Maps API (``/v3/carbon-intensity/forecast``, carbon only) with its
key in the ``ELECTRICITY_MAPS_API_KEY`` environment variable::

    client = ElectricityMapsClient.from_env()
    forecast = client.forecast("DE")
"""

from __future__ import annotations

import csv
import datetime as dt
import itertools
import json
import math
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from kilowatt.errors import CatalogError, SpecError

__all__ = [
    "API_KEY_ENV",
    "ElectricityMapsClient",
    "HourlyForecast",
    "load_forecast_csv",
]

API_KEY_ENV = "ELECTRICITY_MAPS_API_KEY"
_HOUR = dt.timedelta(hours=1)
_COLUMNS = ("region", "hour", "gco2e_per_kwh")


@dataclass(frozen=True)
class HourlyForecast:
    """Carbon intensity (and price, where known) for consecutive hours from ``start``.

    Attributes:
        region: the region or grid zone the figures are for.
        start: the first hour (UTC, on the hour).
        gco2e_per_kwh: grid carbon intensity of each hour.
        price_usd_per_kwh: electricity price of each hour, or ``None`` when the source
            gives no prices.
        source: where the figures came from (file path or API URL).
    """

    region: str
    start: dt.datetime
    gco2e_per_kwh: tuple[float, ...]
    price_usd_per_kwh: tuple[float, ...] | None
    source: str

    @property
    def end(self) -> dt.datetime:
        """The end of the last hour covered."""
        return self.start + len(self.gco2e_per_kwh) * _HOUR

    def hour_index(self, moment: dt.datetime) -> float:
        """Hours from ``start`` to ``moment`` (fractional)."""
        return (moment - self.start) / _HOUR

    def require_until(self, moment: dt.datetime) -> None:
        """``SpecError`` unless the forecast covers every hour up to ``moment``."""
        if moment > self.end:
            raise SpecError(
                f"the {self.region} forecast from {self.source} ends at {_iso(self.end)}, "
                f"before the deadline {_iso(moment)}; give a forecast that covers the "
                "deadline, or an earlier deadline"
            )


def load_forecast_csv(path: Path, region: str) -> HourlyForecast:
    """The hours of ``region`` in the CSV at ``path`` (columns: region, hour,
    gco2e_per_kwh and optionally price_usd_per_kwh).

    Raises:
        CatalogError: the file is missing or malformed, the region has no rows, or its
            hours are not consecutive (names the file, line and value).
    """
    try:
        text = path.read_text()
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read forecast ({exc.strerror})") from None
    reader = csv.DictReader(text.splitlines())
    missing = [c for c in _COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise CatalogError(
            f"{path}: forecast needs columns {', '.join(_COLUMNS)} (and optionally "
            f"price_usd_per_kwh); missing {', '.join(missing)}"
        )
    rows = [(line, row) for line, row in enumerate(reader, start=2) if row["region"] == region]
    if not rows:
        raise CatalogError(f"{path}: no forecast rows for region {region!r}")
    hours = [(_parse_hour(path, line, row["hour"]), line, row) for line, row in rows]
    hours.sort(key=lambda item: item[0])
    gap = _first_gap([moment for moment, _, _ in hours])
    if gap is not None:
        (before, _, _), (after, line, _) = hours[gap - 1], hours[gap]
        raise CatalogError(
            f"{path}, line {line}: hour {_iso(after)} does not follow {_iso(before)}; "
            "a forecast needs one row per consecutive hour"
        )
    carbon = tuple(_number(path, line, row, "gco2e_per_kwh") for _, line, row in hours)
    has_price = "price_usd_per_kwh" in (reader.fieldnames or [])
    price = (
        tuple(_number(path, line, row, "price_usd_per_kwh") for _, line, row in hours)
        if has_price
        else None
    )
    return HourlyForecast(region, hours[0][0], carbon, price, str(path))


class ElectricityMapsClient:
    """Carbon-intensity forecasts from the Electricity Maps API (v3).

    Args:
        api_key: the API token (sent in the ``auth-token`` header).
        base_url: the API root (a local server in tests).
        timeout_s: seconds to wait for an answer.
    """

    def __init__(
        self,
        api_key: str,
        base_url: str = "https://api.electricitymap.org",
        timeout_s: float = 10.0,
    ) -> None:
        self.api_key = api_key
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, base_url: str | None = None
    ) -> ElectricityMapsClient:
        """A client whose key is ``ELECTRICITY_MAPS_API_KEY``; ``SpecError`` if unset."""
        env = os.environ if env is None else env
        key = env.get(API_KEY_ENV, "")
        if not key:
            raise SpecError(
                f"{API_KEY_ENV} is not set; export your Electricity Maps API key, "
                "or give an hourly forecast CSV instead"
            )
        return cls(key, base_url) if base_url else cls(key)

    def forecast(self, zone: str) -> HourlyForecast:
        """The hourly carbon-intensity forecast of ``zone`` (no prices).

        Raises:
            CatalogError: the API refused the request or answered something unexpected,
                such as hours that are not consecutive.
        """
        query = urllib.parse.urlencode({"zone": zone})
        url = f"{self.base_url}/v3/carbon-intensity/forecast?{query}"
        request = urllib.request.Request(url, headers={"auth-token": self.api_key})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise CatalogError(
                f"Electricity Maps answered {exc.code} for zone {zone!r}; check "
                f"{API_KEY_ENV} and the zone name"
            ) from None
        except (urllib.error.URLError, TimeoutError, json.JSONDecodeError) as exc:
            raise CatalogError(f"cannot read the forecast from {url}: {exc}") from None
        return _from_api(zone, url, body)


def _from_api(zone: str, url: str, body: object) -> HourlyForecast:
    points = body.get("forecast") if isinstance(body, dict) else None
    if not points:
        raise CatalogError(f"{url}: the answer has no 'forecast' list")
    try:
        hours = sorted(
            (_to_utc(dt.datetime.fromisoformat(p["datetime"])), float(p["carbonIntensity"]))
            for p in points
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CatalogError(f"{url}: unexpected forecast entry ({exc})") from None
    # The figures are read by position from the first hour: a missing or repeated hour
    # would shift every later one.
    gap = _first_gap([moment for moment, _ in hours])
    if gap is not None:
        raise CatalogError(
            f"{url}: forecast hour {_iso(hours[gap][0])} does not follow "
            f"{_iso(hours[gap - 1][0])}; a forecast needs one value per consecutive hour. "
            f"Retry later, or give an hourly forecast CSV for zone {zone!r} instead"
        )
    return HourlyForecast(zone, hours[0][0], tuple(v for _, v in hours), None, url)


def _first_gap(hours: list[dt.datetime]) -> int | None:
    """Index of the first of the sorted ``hours`` that is not one hour after the one before
    it (a gap, a repeat or a finer step), or None when they are consecutive."""
    for index, (before, after) in enumerate(itertools.pairwise(hours), start=1):
        if after - before != _HOUR:
            return index
    return None


def _parse_hour(path: Path, line: int, value: str) -> dt.datetime:
    try:
        moment = _to_utc(dt.datetime.fromisoformat(value))
    except ValueError:
        raise CatalogError(
            f"{path}, line {line}: hour {value!r} is not an ISO 8601 time "
            "(e.g. 2026-12-01T13:00:00Z)"
        ) from None
    if moment.minute or moment.second or moment.microsecond:
        raise CatalogError(f"{path}, line {line}: hour {value!r} is not on the hour")
    return moment


def _number(path: Path, line: int, row: dict[str, str], column: str) -> float:
    try:
        value = float(row[column])
    except (TypeError, ValueError):
        raise CatalogError(
            f"{path}, line {line}: {column} {row[column]!r} is not a number"
        ) from None
    if value < 0 or not math.isfinite(value):
        raise CatalogError(f"{path}, line {line}: {column} must be >= 0, got {value}")
    return value


def _to_utc(moment: dt.datetime) -> dt.datetime:
    """Naive times are read as UTC."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC)


def _iso(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%MZ")
