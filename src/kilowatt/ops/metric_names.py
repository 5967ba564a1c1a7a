"""The Prometheus metric names kilowatt's processes export, as the exports refer to them.

``ops`` may not import ``serve``, ``train`` or ``api`` (they load torch and web frameworks);
a test builds each of their registries and checks that every name here, and every metric an
exported rule or dashboard queries, is one they really export.
"""

from __future__ import annotations

__all__ = [
    "API_LATENCY",
    "API_REQUESTS",
    "SERVE_BATCH_SIZE",
    "SERVE_COMPUTE_LATENCY",
    "SERVE_ENERGY",
    "SERVE_ENERGY_PER_REQUEST",
    "SERVE_IN_FLIGHT",
    "SERVE_LATENCY",
    "SERVE_LATENCY_BUCKETS_S",
    "SERVE_QUEUE_CAPACITY",
    "SERVE_QUEUE_DEPTH",
    "SERVE_QUEUE_LATENCY",
    "SERVE_REQUESTS",
    "SERVE_SHED",
    "TRAIN_LAST_CHECKPOINT_STEP",
    "TRAIN_LAST_CHECKPOINT_TIME",
    "TRAIN_LOSS",
    "TRAIN_POWER",
    "TRAIN_SAMPLES_PER_S",
    "TRAIN_STEP",
    "TRAIN_STEP_TIME",
]

# kilowatt.serve.metrics.ServeMetrics (counters end in _total, histograms in _bucket etc.)
SERVE_REQUESTS = "kilowatt_serve_requests_total"
SERVE_LATENCY = "kilowatt_serve_request_latency_seconds"
# its bucket bounds: a latency SLO must be one of them for the burn-rate alert
SERVE_LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
)  # fmt: skip
SERVE_QUEUE_LATENCY = "kilowatt_serve_queue_latency_seconds"
SERVE_COMPUTE_LATENCY = "kilowatt_serve_compute_latency_seconds"
SERVE_BATCH_SIZE = "kilowatt_serve_batch_size"
SERVE_QUEUE_DEPTH = "kilowatt_serve_queue_depth"
SERVE_QUEUE_CAPACITY = "kilowatt_serve_queue_capacity"
SERVE_IN_FLIGHT = "kilowatt_serve_in_flight_requests"
SERVE_SHED = "kilowatt_serve_shed_requests_total"
SERVE_ENERGY = "kilowatt_serve_energy_joules_total"
SERVE_ENERGY_PER_REQUEST = "kilowatt_serve_energy_per_request_joules"

# kilowatt.train.metrics.PrometheusCallback
TRAIN_STEP = "kilowatt_train_step"
TRAIN_LOSS = "kilowatt_train_loss"
TRAIN_SAMPLES_PER_S = "kilowatt_train_samples_per_second"
TRAIN_STEP_TIME = "kilowatt_train_step_seconds"
TRAIN_POWER = "kilowatt_train_power_watts"
TRAIN_LAST_CHECKPOINT_STEP = "kilowatt_train_last_checkpoint_step"
TRAIN_LAST_CHECKPOINT_TIME = "kilowatt_train_last_checkpoint_timestamp_seconds"

# kilowatt.api (the control-plane server behind `kilowatt ui`)
API_REQUESTS = "kilowatt_api_requests_total"
API_LATENCY = "kilowatt_api_request_duration_seconds"
