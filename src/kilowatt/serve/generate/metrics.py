"""Prometheus metrics of generation, on a registry the composer passes in."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from kilowatt.serve.generate.engine import GenerationEngine, GenerationReport

__all__ = ["GenerateMetrics"]

_TTFT_BUCKETS_S = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
_ITL_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
_TOKEN_BUCKETS = (1, 4, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
_ENERGY_BUCKETS_J = (1e-5, 1e-4, 1e-3, 0.01, 0.1, 1.0, 10.0)


class GenerateMetrics:
    """Per-request time to first token, inter-token latency, tokens and joules per token.

    Args:
        registry: where the metrics live; tests pass a fresh ``CollectorRegistry()``.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        self.requests = Counter(
            "kilowatt_generate_requests", "Finished generations, by finish reason.",
            ("model", "finish_reason"), registry=reg,
        )  # fmt: skip
        self.ttft = Histogram(
            "kilowatt_generate_time_to_first_token_seconds", "Arrival to first token.",
            ("model",), buckets=_TTFT_BUCKETS_S, registry=reg,
        )  # fmt: skip
        self.inter_token = Histogram(
            "kilowatt_generate_inter_token_latency_seconds", "Gap between successive tokens.",
            ("model",), buckets=_ITL_BUCKETS_S, registry=reg,
        )  # fmt: skip
        self.prompt_tokens = Histogram(
            "kilowatt_generate_prompt_tokens", "Prompt tokens per request.",
            ("model",), buckets=_TOKEN_BUCKETS, registry=reg,
        )  # fmt: skip
        self.completion_tokens = Histogram(
            "kilowatt_generate_completion_tokens", "Generated tokens per request.",
            ("model",), buckets=_TOKEN_BUCKETS, registry=reg,
        )  # fmt: skip
        self.energy_per_token = Histogram(
            "kilowatt_generate_energy_per_output_token_joules",
            "A request's share of its steps' joules over its output tokens (kilowatt.meter).",
            ("model", "method"), buckets=_ENERGY_BUCKETS_J, registry=reg,
        )  # fmt: skip
        self.energy = Counter(
            "kilowatt_generate_energy_joules", "Joules of generation steps.",
            ("model", "method"), registry=reg,
        )  # fmt: skip
        self.output_tokens = Counter(
            "kilowatt_generate_output_tokens", "Tokens generated.", ("model",), registry=reg
        )
        self._gauges = {
            name: Gauge(f"kilowatt_generate_{name}", doc, ("model",), registry=reg)
            for name, doc in (
                ("running_sequences", "Sequences in the running batch."),
                ("waiting_requests", "Requests queued and not yet started."),
                ("kv_blocks_used", "KV-cache blocks held by sequences."),
                ("kv_blocks_total", "KV-cache blocks in the pool."),
            )
        }

    def watch(self, engine: GenerationEngine) -> None:
        """Export the engine's batch, queue and KV-cache occupancy, read at each scrape."""
        model = engine.runner.name
        readings = {
            "running_sequences": lambda: engine.running,
            "waiting_requests": lambda: engine.waiting,
            "kv_blocks_used": lambda: engine.blocks.used_blocks,
            "kv_blocks_total": lambda: engine.blocks.num_blocks,
        }
        for name, read in readings.items():
            self._gauges[name].labels(model).set_function(read)

    def observer(self, model: str) -> Any:
        """The ``on_finish`` callback recording one model's reports."""

        def observe(report: GenerationReport) -> None:
            self.requests.labels(model, report.finish_reason).inc()
            self.prompt_tokens.labels(model).observe(report.prompt_tokens)
            self.completion_tokens.labels(model).observe(report.completion_tokens)
            self.output_tokens.labels(model).inc(report.completion_tokens)
            if report.completion_tokens:
                self.ttft.labels(model).observe(report.ttft_s)
            inter_token = self.inter_token.labels(model)
            for gap_s in report.inter_token_s:
                inter_token.observe(gap_s)
            per_token = report.energy_per_token_j
            if report.energy_j is not None and report.energy_method:
                self.energy.labels(model, report.energy_method).inc(max(report.energy_j, 0.0))
            if per_token is not None and report.energy_method:
                self.energy_per_token.labels(model, report.energy_method).observe(per_token)

        return observe

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)
