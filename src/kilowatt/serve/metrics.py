"""Prometheus metrics of the server, on a registry the composer passes in.

With several worker processes, ``PROMETHEUS_MULTIPROC_DIR`` must be set before the workers
start; each then writes its samples to that folder and ``render`` aggregates them, so a
scrape sees totals over all processes rather than whichever process answered.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = ["CONTENT_TYPE_LATEST", "ServeMetrics"]

_LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_ENERGY_BUCKETS_J = (0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0)
_MV = ("model", "version")


@dataclass(frozen=True)
class _VersionMetrics:
    ok: Any
    latency: Any
    in_flight: Any


class ServeMetrics:
    """Every metric the server exports; one instance per registry.

    Args:
        registry: where the metrics live; tests pass a fresh ``CollectorRegistry()``.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._children: dict[tuple[str, str], _VersionMetrics] = {}
        reg = self.registry
        self.requests = Counter(
            "kilowatt_serve_requests", "Requests answered, by status code.",
            (*_MV, "status"), registry=reg,
        )  # fmt: skip
        self.latency = Histogram(
            "kilowatt_serve_request_latency_seconds", "Arrival to answer, per request.",
            _MV, buckets=_LATENCY_BUCKETS_S, registry=reg,
        )  # fmt: skip
        self.queue_latency = Histogram(
            "kilowatt_serve_queue_latency_seconds", "Time a request waited for its batch.",
            _MV, buckets=_LATENCY_BUCKETS_S, registry=reg,
        )  # fmt: skip
        self.compute_latency = Histogram(
            "kilowatt_serve_compute_latency_seconds", "Forward-pass time of each batch.",
            _MV, buckets=_LATENCY_BUCKETS_S, registry=reg,
        )  # fmt: skip
        self.batch_size = Histogram(
            "kilowatt_serve_batch_size", "Rows per forward pass.",
            _MV, buckets=_BATCH_BUCKETS, registry=reg,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "kilowatt_serve_queue_depth", "Requests waiting for a batch.",
            _MV, registry=reg, multiprocess_mode="livesum",
        )  # fmt: skip
        self.queue_capacity = Gauge(
            "kilowatt_serve_queue_capacity", "Most requests that may wait; more get 429.",
            _MV, registry=reg, multiprocess_mode="livesum",
        )  # fmt: skip
        self.in_flight = Gauge(
            "kilowatt_serve_in_flight_requests", "Requests admitted and not yet answered.",
            ("model",), registry=reg, multiprocess_mode="livesum",
        )  # fmt: skip
        self.shed = Counter(
            "kilowatt_serve_shed_requests", "Requests refused without an answer, by cause.",
            ("model", "reason"), registry=reg,
        )  # fmt: skip
        self.cache_hits = Counter(
            "kilowatt_serve_cache_hits", "Requests answered from the response cache.",
            _MV, registry=reg,
        )  # fmt: skip
        self.cache_misses = Counter(
            "kilowatt_serve_cache_misses", "Cacheable requests that ran the model.",
            _MV, registry=reg,
        )  # fmt: skip
        self.energy = Counter(
            "kilowatt_serve_energy_joules", "Energy of forward passes (kilowatt.meter).",
            _MV, registry=reg,
        )  # fmt: skip
        self.energy_per_request = Histogram(
            "kilowatt_serve_energy_per_request_joules", "A batch's energy over its requests.",
            _MV, buckets=_ENERGY_BUCKETS_J, registry=reg,
        )  # fmt: skip
        self.shadow = Counter(
            "kilowatt_serve_shadow_requests", "Shadow copies, by outcome.",
            (*_MV, "outcome"), registry=reg,
        )  # fmt: skip
        self.shadow_latency = Histogram(
            "kilowatt_serve_shadow_latency_seconds", "Latency of shadow copies.",
            _MV, buckets=_LATENCY_BUCKETS_S, registry=reg,
        )  # fmt: skip

    def for_version(self, model: str, version: str) -> _VersionMetrics:
        """The labelled children of one model version, looked up once and reused: a
        ``labels()`` call per request costs more than the observation itself."""
        key = (model, version)
        children = self._children.get(key)
        if children is None:
            children = _VersionMetrics(
                ok=self.requests.labels(model, version, "200"),
                latency=self.latency.labels(model, version),
                in_flight=self.in_flight.labels(model),
            )
            self._children[key] = children
        return children

    def render(self) -> bytes:
        """The exposition text; aggregated over processes in multiprocess mode."""
        path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if path:
            from prometheus_client import multiprocess

            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged, path=path)
            return generate_latest(merged)
        return generate_latest(self.registry)

    def on_batch(self, engine: Any, report: Any) -> None:
        """Record one batch (called on the inference thread)."""
        labels = (engine.name, engine.version)
        self.queue_depth.labels(*labels).set(engine.batcher.depth)
        self.queue_capacity.labels(*labels).set(engine.batcher.queue_capacity)
        if report.expired:
            self.shed.labels(engine.name, "deadline").inc(report.expired)
        if not report.requests:
            return
        self.batch_size.labels(*labels).observe(report.batch_rows)
        self.compute_latency.labels(*labels).observe(report.compute_s)
        queue_hist = self.queue_latency.labels(*labels)
        for queue_s in report.queue_s:
            queue_hist.observe(queue_s)
        if report.energy_j is not None:
            self.energy.labels(*labels).inc(max(report.energy_j, 0.0))
            per_request = self.energy_per_request.labels(*labels)
            for _ in range(report.requests):
                per_request.observe(report.energy_j / report.requests)
