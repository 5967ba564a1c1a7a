"""Latency percentiles and throughput of a deployment, read from its Prometheus ``/metrics``.

The serving engine exports ``kilowatt_serve_request_latency_seconds`` (a histogram),
``kilowatt_serve_requests_total`` and ``kilowatt_serve_energy_joules_total``. Percentiles
are interpolated inside histogram buckets, as Prometheus' ``histogram_quantile`` does;
throughput is the request rate between two scrapes by this server, or the average since the
deployment was created on the first one.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "DeploymentStats",
    "ScrapeCache",
    "ServingMetrics",
    "histogram_quantile",
    "parse_serving_metrics",
]

LATENCY_METRIC = "kilowatt_serve_request_latency_seconds"
REQUESTS_METRIC = "kilowatt_serve_requests"
ENERGY_METRIC = "kilowatt_serve_energy_joules"
SCRAPE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class DeploymentStats:
    latency_p50_s: float | None
    latency_p95_s: float | None
    latency_p99_s: float | None
    requests: float
    throughput_rps: float | None
    window_s: float | None
    source: str
    error: str | None = None

    @classmethod
    def unavailable(cls, source: str, error: str) -> DeploymentStats:
        """Stats that could not be read, and why."""
        return cls(None, None, None, 0.0, None, None, source, error)


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """The ``q`` quantile from cumulative ``(upper_bound, count)`` buckets, or None if empty.

    >>> histogram_quantile(0.5, [(0.1, 0.0), (0.2, 10.0), (math.inf, 10.0)])
    0.15
    """
    buckets = sorted(buckets)
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for upper_bound, count in buckets:
        if count >= rank:
            if math.isinf(upper_bound):
                return lower_bound  # beyond the last finite bucket: its bound is all we know
            width = count - lower_count
            share = (rank - lower_count) / width if width > 0 else 1.0
            return round(lower_bound + (upper_bound - lower_bound) * share, 12)
        lower_bound, lower_count = upper_bound, count
    return None


@dataclass(frozen=True)
class ServingMetrics:
    """A kilowatt server's ``/metrics``, summed over models and versions."""

    latency_buckets: list[tuple[float, float]]
    """(upper bound in seconds, cumulative count), ascending."""
    requests: float
    energy_j: float | None
    """Joules of forward passes; None when the server exports no energy."""


def parse_serving_metrics(text: str) -> ServingMetrics:
    """Latency buckets, request count and energy from Prometheus exposition ``text``."""
    buckets: dict[float, float] = {}
    requests = 0.0
    energy_j: float | None = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"{LATENCY_METRIC}_bucket":
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
            elif sample.name == f"{REQUESTS_METRIC}_total":
                requests += sample.value
            elif sample.name == f"{ENERGY_METRIC}_total":
                energy_j = (energy_j or 0.0) + sample.value
    return ServingMetrics(sorted(buckets.items()), requests, energy_j)


class ScrapeCache:
    """The previous request count of each deployment, to turn counts into a rate."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[int, tuple[float, float]] = {}

    def stats(self, deployment_id: int, endpoint: str, created_at: float) -> DeploymentStats:
        """Scrape ``endpoint``/metrics and summarise it (``error`` says why it could not)."""
        url = endpoint.rstrip("/") + "/metrics"
        if not url.startswith(("http://", "https://")):
            return DeploymentStats.unavailable(url, "the endpoint is not an http(s) URL")
        try:
            response = httpx.get(url, timeout=SCRAPE_TIMEOUT_S)
            response.raise_for_status()
            scraped = parse_serving_metrics(response.text)
            buckets, requests = scraped.latency_buckets, scraped.requests
        except (httpx.HTTPError, ValueError) as exc:
            return DeploymentStats.unavailable(url, f"cannot read {url}: {exc}")
        now = time.time()
        with self._lock:
            before = self._last.get(deployment_id)
            self._last[deployment_id] = (now, requests)
        since, count_before = before if before else (created_at, 0.0)
        window_s = now - since
        rate = (requests - count_before) / window_s if window_s > 0 else None
        return DeploymentStats(
            latency_p50_s=histogram_quantile(0.50, buckets),
            latency_p95_s=histogram_quantile(0.95, buckets),
            latency_p99_s=histogram_quantile(0.99, buckets),
            requests=requests,
            throughput_rps=rate if rate is None or rate >= 0 else None,
            window_s=window_s,
            source=url,
        )
