"""Step 4 of the quickstart: serve the registered model with ``kilowatt serve`` in a child
process (``kilowatt.serve.process.ServerProcess``: no process outlives the command), check
one answer, load-test it with kilowatt's load generator, and stop it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from kilowatt.errors import ServeError

__all__ = [
    "LatencyBucket",
    "ServingOutcome",
    "load_test",
    "scrape_server_metrics",
]


@dataclass(frozen=True)
class LatencyBucket:
    """Requests whose server-side latency fell in ``(low_s, high_s]``."""

    low_s: float
    high_s: float
    count: int


@dataclass(frozen=True)
class ServingOutcome:
    """What serving showed.

    Attributes:
        endpoint: the server's base URL.
        pid: the server process's id (stopped when this is returned).
        exit_code: how the server exited (0 after a clean drain).
        check: the answer to one held-out image: ``(true digit, predicted digit)``.
        results: the load generator's results (``ScenarioResult``), one per load level.
        histogram: the server's own request-latency histogram.
        energy_j: energy of all forward passes, from the server's meter.
        requests: requests the server answered.
        energy_method: how the server's joules were obtained.
        deployment: ``(id, status)`` of the deployment the server recorded in the store.
    """

    endpoint: str
    pid: int
    exit_code: int | None
    check: tuple[int, int]
    results: list[Any]
    histogram: list[LatencyBucket]
    energy_j: float | None
    requests: int
    energy_method: str
    deployment: tuple[int, str] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def headline(self) -> Any:
        """The load level with the highest throughput."""
        return max(self.results, key=lambda r: r.throughput_rps)


def predict_one(endpoint: str, pixels: list[float]) -> int:
    """The digit the server answers for one image (argmax of its logits)."""
    import httpx

    reply = httpx.post(f"{endpoint}/predict", json={"inputs": pixels}, timeout=30.0)
    if reply.status_code != 200:
        raise ServeError(f"POST {endpoint}/predict answered {reply.status_code}: {reply.text}")
    logits = reply.json()["outputs"]
    return int(max(range(len(logits)), key=lambda i: logits[i]))


def load_test(endpoint: str, pixels: list[float], duration_s: float) -> list[Any]:
    """One request at a time, then 8 concurrent clients, each for ``duration_s`` at most."""
    from kilowatt.bench.loadgen import LoadSpec, run_scenarios

    spec = LoadSpec(
        url=f"{endpoint}/predict",
        body=json.dumps({"inputs": pixels}).encode(),
        scenario="sweep",
        concurrencies=(1, 8),
        duration_s=duration_s,
        max_requests=20_000,
        slo_s=0.05,
    )
    return run_scenarios(spec)


def scrape_server_metrics(endpoint: str) -> tuple[list[LatencyBucket], float | None, int]:
    """The server's latency histogram, joules of forward passes and requests answered,
    read from its Prometheus ``/metrics``."""
    import httpx

    from kilowatt.api.serving_stats import parse_serving_metrics

    scraped = parse_serving_metrics(httpx.get(f"{endpoint}/metrics", timeout=10.0).text)
    return _buckets(dict(scraped.latency_buckets)), scraped.energy_j, int(scraped.requests)


def _buckets(cumulative: dict[float, float]) -> list[LatencyBucket]:
    buckets, low, below = [], 0.0, 0.0
    for high in sorted(cumulative):
        buckets.append(LatencyBucket(low, high, int(cumulative[high] - below)))
        low, below = high, cumulative[high]
    return buckets
