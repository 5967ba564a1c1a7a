"""Build and run a generative server: model folder -> engine -> OpenAI-compatible app."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI

from kilowatt.serve.generate.engine import EngineConfig, GenerationEngine
from kilowatt.serve.generate.lm import load_runner
from kilowatt.serve.generate.metrics import GenerateMetrics
from kilowatt.serve.generate.openai_routes import create_generate_app

__all__ = ["build_generate_app", "serve_generate"]


def build_generate_app(
    folder: str | Path,
    *,
    config: EngineConfig | None = None,
    name: str | None = None,
    meter: Any = None,
    metrics: GenerateMetrics | None = None,
    device: str = "cpu",
) -> tuple[FastAPI, GenerationEngine]:
    """Load the causal LM in ``folder``, start its engine and wrap it in the HTTP app.

    Args:
        folder: a kilowatt tiny-decoder folder or a ``transformers`` causal LM folder.
        config: KV pool and scheduling limits.
        name: the model id clients ask for (default: the folder's name).
        meter: energy meter for joules per token (``EnergyMeter.for_this_process()``).
        metrics: where the Prometheus metrics go (default: a fresh registry).
        device: torch device of the weights and the KV cache.
    """
    config = config or EngineConfig()
    runner = load_runner(folder, num_blocks=config.num_blocks, block_size=config.block_size,
                         name=name, device=device)  # fmt: skip
    metrics = metrics or GenerateMetrics()
    engine = GenerationEngine(runner, config, meter=meter, on_finish=metrics.observer(runner.name))
    metrics.watch(engine)
    engine.start()
    return create_generate_app(engine, metrics), engine


def serve_generate(
    folder: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    config: EngineConfig | None = None,
    name: str | None = None,
    meter: Any = None,
) -> None:
    """Serve the causal LM in ``folder`` over HTTP until interrupted.

    Example:
        >>> serve_generate("tiny-gpt", port=8000)  # doctest: +SKIP
    """
    import uvicorn

    app, _ = build_generate_app(folder, config=config, name=name, meter=meter)
    uvicorn.run(app, host=host, port=port, log_level="warning")
