"""An opt-in Prometheus endpoint for a running training job.

    >>> from prometheus_client import CollectorRegistry
    >>> registry = CollectorRegistry()
    >>> callback = PrometheusCallback(registry=registry)
    >>> callback.on_step(StepEvent(step=5, epoch=0, loss=0.25, lr=0.1, step_time_s=0.01,
    ...                            samples_per_s=3200.0, power_w=40.0))
    >>> registry.get_sample_value("kilowatt_train_step")
    5.0

With ``port`` set, the callback serves ``/metrics`` on 127.0.0.1 from the process that runs
rank 0 (a worker process when ``workers > 1``) and stops it when the fit ends.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, start_http_server

from kilowatt.train.callbacks import Callback, CheckpointEvent, FitResult, FitStart, StepEvent

__all__ = ["PrometheusCallback"]


class PrometheusCallback(Callback):
    """Exposes step, loss, throughput, step time, power and the last checkpoint as gauges.

    The last checkpoint's step and wall-clock time start at the fit's start (a job that has
    not checkpointed yet is as old as its start), so an alert can compare their age with
    the job's checkpoint interval.

    Args:
        registry: the registry to fill (a fresh one per job when None).
        port: serve ``/metrics`` on 127.0.0.1:``port`` during the fit (0 = any free port;
            read ``bound_port``). None: do not serve.
    """

    def __init__(self, registry: CollectorRegistry | None = None, port: int | None = None) -> None:
        self.port = port
        self.bound_port: int | None = None
        self._server: Any = None
        self._registry = registry
        self._gauges: dict[str, Gauge] | None = None
        self._data_gauges: dict[str, Gauge] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Registries hold locks; a worker process builds its own.
        return {
            **self.__dict__,
            "_registry": None,
            "_gauges": None,
            "_data_gauges": {},
            "_server": None,
        }

    @property
    def registry(self) -> CollectorRegistry:
        """The registry the gauges live on."""
        if self._registry is None:
            self._registry = CollectorRegistry()
        return self._registry

    def _gauge(self, name: str) -> Gauge:
        if self._gauges is None:
            help_text = {
                "step": "Optimizer steps completed.",
                "loss": "Mean training loss over the last logging interval.",
                "samples_per_second": "Global training throughput in samples per second.",
                "step_seconds": "Mean seconds per optimizer step over the last interval.",
                "power_watts": "Average power of the job over the last interval, watts.",
                "last_checkpoint_step": "Step of the newest checkpoint (or of the start).",
                "last_checkpoint_timestamp_seconds": "Unix time of the newest checkpoint "
                "(or of the start).",
            }
            self._gauges = {
                key: Gauge(f"kilowatt_train_{key}", text, registry=self.registry)
                for key, text in help_text.items()
            }
        return self._gauges[name]

    def on_fit_start(self, event: FitStart) -> None:
        self._gauge("step").set(event.start_step)
        self._gauge("last_checkpoint_step").set(event.start_step)
        self._gauge("last_checkpoint_timestamp_seconds").set(time.time())
        if self.port is not None and self._server is None:
            self._server, _ = start_http_server(self.port, addr="127.0.0.1", registry=self.registry)
            self.bound_port = int(self._server.server_port)

    def on_step(self, event: StepEvent) -> None:
        self._gauge("step").set(event.step)
        self._gauge("loss").set(event.loss)
        self._gauge("samples_per_second").set(event.samples_per_s)
        self._gauge("step_seconds").set(event.step_time_s)
        if event.power_w is not None:
            self._gauge("power_watts").set(event.power_w)
        for name, value in event.data.items():
            self._data_gauge(name).set(value)

    def _data_gauge(self, name: str) -> Gauge:
        # The loader's figures: data_<tier>_bytes, data_<tier>_hit_rate, data_wait_s, ...
        if name not in self._data_gauges:
            self._data_gauges[name] = Gauge(
                f"kilowatt_train_{name}",
                f"Data loader: {name.removeprefix('data_').replace('_', ' ')} (so far).",
                registry=self.registry,
            )
        return self._data_gauges[name]

    def on_checkpoint(self, event: CheckpointEvent) -> None:
        self._gauge("last_checkpoint_step").set(event.step)
        # wall-clock on purpose: Prometheus compares it with time()
        self._gauge("last_checkpoint_timestamp_seconds").set(time.time())

    def on_fit_end(self, result: FitResult) -> None:
        self._gauge("step").set(result.steps)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
