"""A real Prometheus (Debian's ``prometheus``) scrapes ``kilowatt serve`` through the exported
configuration while kilowatt's load generator drives it; a deliberately low latency SLO makes
the burn-rate alert fire."""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from kilowatt.bench.loadgen import LoadSpec, default_body, run_scenarios
from kilowatt.cli.main import main
from kilowatt.ports import reserve_port
from kilowatt.serve.process import ServerProcess
from kilowatt.store import open_store

PROMETHEUS = shutil.which("prometheus")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        PROMETHEUS is None and os.environ.get("CI") != "true",
        reason="Debian's prometheus is not installed (apt-get install prometheus)",
    ),
]
FEATURES = 16


def _until(what: str, check: Callable[[], Any], timeout_s: float = 90.0) -> Any:
    """Poll ``check`` until it returns something truthy; the deadline only guards a hang."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@contextmanager
def _process(command: list[str], ready_url: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``command`` (Prometheus), wait until ``ready_url`` answers 200, stop it by its
    PID. kilowatt's own servers run through ``ServerProcess`` instead."""
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    try:

        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"{command[0]} exited:\n{log.read_text()[-3000:]}")
            try:
                return httpx.get(ready_url, timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        _until(f"{ready_url} to be ready", ready)
        yield process
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(10)


def _register_tiny_model(tmp_path: Path) -> None:
    import torch

    import kilowatt

    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    with warnings.catch_warnings():  # TorchScript is deprecated upstream, still shipped
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(torch.nn.Linear(FEATURES, 4).eval()).save(str(path))
    with kilowatt.start_run(project="ops") as run:
        run.log_artifact(path)
        kilowatt.register_model("tiny", run=run, artifact="tiny.pt", aliases=["production"])


def _query(base: str, promql: str) -> list[dict[str, Any]]:
    reply = httpx.get(f"{base}/api/v1/query", params={"query": promql}, timeout=5).json()
    assert reply["status"] == "success", reply
    return list(reply["data"]["result"])


def _scalar(base: str, promql: str) -> float | None:
    result = _query(base, promql)
    return float(result[0]["value"][1]) if result else None


def _server_total(url: str) -> float:
    total = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith("kilowatt_serve_requests_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_prometheus_scrapes_serving_and_fires_the_latency_slo_alert(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert PROMETHEUS is not None, "CI must have Debian's prometheus (.ci/run installs it)"
    _register_tiny_model(tmp_path)
    # Prometheus cannot bind port 0 and report it back: its port is reserved beforehand.
    prom_url = f"http://127.0.0.1:{reserve_port()}"
    # a fixed 5 ms batch window puts every request far above the 0.5 ms objective
    serve = ["tiny@production", "--fixed-window", "--max-queue-delay-ms", "5"]
    with ServerProcess(serve, log_path=tmp_path / "serve.log") as server:
        serve_url = server.endpoint
        with open_store() as store:
            assert [d.status for d in store.list_deployments("tiny")] == ["running"]
        out = tmp_path / "prometheus"
        code = main(["export", "prometheus", "--out", str(out), "--api-url", "",
                     "--scrape-interval-s", "1", "--evaluation-interval-s", "1",
                     "--latency-slo-ms", "0.5", "--burn-long-s", "20", "--burn-short-s", "5",
                     "--for-s", "0"])  # fmt: skip
        assert code == 0, capsys.readouterr().err
        prometheus = [PROMETHEUS, f"--config.file={out / 'prometheus.yml'}",
                      f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                      f"--web.listen-address={prom_url.removeprefix('http://')}"]  # fmt: skip
        with _process(prometheus, f"{prom_url}/-/ready", tmp_path / "prometheus.log"):
            _until(
                "the server target to be up", lambda: _scalar(prom_url, 'up{job="kilowatt-serve"}')
            )
            infer = f"{serve_url}/v2/models/tiny/infer"
            load = LoadSpec(url=infer, body=default_body(infer, FEATURES), scenario="server",
                            qps=100.0, duration_s=8.0, max_requests=800, slo_s=0.5)  # fmt: skip
            results: list[Any] = []
            driver = threading.Thread(target=lambda: results.extend(run_scenarios(load)))
            driver.start()
            alert = _until("the latency SLO alert to fire", lambda: _firing(prom_url))
            driver.join(60)
            assert results and results[0].ok > 0
            _check_series(prom_url, serve_url, results[0].ok)
    assert alert["labels"]["model"] == "tiny" and alert["labels"]["severity"] == "page"


def _firing(prom_url: str) -> dict[str, Any] | None:
    alerts = httpx.get(f"{prom_url}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
    for alert in alerts:
        if alert["labels"]["alertname"] == "KilowattLatencySLOFastBurn" and (
            alert["state"] == "firing"
        ):
            return dict(alert)
    return None


def _check_series(prom_url: str, serve_url: str, answered: int) -> None:
    total = _server_total(serve_url)
    assert total >= answered
    # once the load has stopped, Prometheus' count catches up with the server's own
    _until(
        "Prometheus to see every request",
        lambda: _scalar(prom_url, "sum(kilowatt_serve_requests_total)") == total,
    )
    p99 = _scalar(
        prom_url,
        "histogram_quantile(0.99, sum by (le) "
        "(rate(kilowatt_serve_request_latency_seconds_bucket[1m])))",
    )
    assert p99 is not None and 0.005 <= p99 < math.inf  # the 5 ms window, at least
    energy = _until(
        "the energy series",
        lambda: _scalar(prom_url, "sum(kilowatt_serve_energy_joules_total)"),
    )
    assert energy > 0
