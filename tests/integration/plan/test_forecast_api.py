"""The Electricity Maps forecast client against a local HTTP server on 127.0.0.1 that
answers like the v3 API and checks the key."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from kilowatt.catalog.forecast import API_KEY_ENV, ElectricityMapsClient
from kilowatt.errors import CatalogError, SpecError
from kilowatt.plan.window import best_window

KEY = "test-key-123"
T0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
# DE overnight: 420 g/kWh until 03:00, wind brings 150 from 03:00 to 06:00.
POINTS = [
    {"carbonIntensity": 420 if h < 3 else 150, "datetime": f"2026-12-01T{h:02d}:00:00.000Z"}
    for h in range(6)
]
# Zone GAP's answer lacks 02:00: read by position, 150 g would move an hour earlier.
GAPPY = [point for point in POINTS if not point["datetime"].startswith("2026-12-01T02")]


class _FakeApi(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        url = urlparse(self.path)
        if self.headers.get("auth-token") != KEY:
            self._answer(401, {"message": "unauthorized"})
        elif url.path != "/v3/carbon-intensity/forecast":
            self._answer(404, {"message": "not found"})
        else:
            zone = parse_qs(url.query)["zone"][0]
            points = GAPPY if zone == "GAP" else POINTS
            self._answer(200, {"zone": zone, "forecast": list(reversed(points))})

    def _answer(self, status: int, body: dict[str, object]) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass


@pytest.fixture
def api_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_forecast_from_the_api_picks_the_windy_hours(api_url: str) -> None:
    client = ElectricityMapsClient.from_env({API_KEY_ENV: KEY}, base_url=api_url)
    forecast = client.forecast("DE")
    assert forecast.region == "DE"
    assert forecast.start == T0
    assert forecast.gco2e_per_kwh == (420.0, 420.0, 420.0, 150.0, 150.0, 150.0)
    assert forecast.price_usd_per_kwh is None
    choice = best_window(
        forecast, energy_j=7.2e6, duration_s=7200, now=T0, deadline=T0 + dt.timedelta(hours=6)
    )
    assert choice.start == T0 + dt.timedelta(hours=3)
    assert choice.carbon_gco2e == pytest.approx(300.0)  # 2 kWh at 150 g


def test_a_forecast_with_a_missing_hour_is_refused(api_url: str) -> None:
    client = ElectricityMapsClient(KEY, base_url=api_url)
    gap = r"hour 2026-12-01T03:00Z does not follow 2026-12-01T01:00Z; .* CSV for zone 'GAP'"
    with pytest.raises(CatalogError, match=gap):
        client.forecast("GAP")


def test_a_wrong_key_is_reported_with_what_to_check(api_url: str) -> None:
    client = ElectricityMapsClient("wrong", base_url=api_url)
    with pytest.raises(CatalogError, match=rf"answered 401 for zone 'DE'; check {API_KEY_ENV}"):
        client.forecast("DE")


def test_a_missing_key_says_which_variable() -> None:
    with pytest.raises(SpecError, match=rf"{API_KEY_ENV} is not set"):
        ElectricityMapsClient.from_env({})
