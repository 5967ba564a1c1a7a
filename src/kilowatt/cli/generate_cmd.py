"""``kilowatt generate train`` and ``kilowatt generate serve``: text generation.

``kilowatt generate train tiny-gpt`` fits kilowatt's small decoder on the shipped text in
seconds; ``kilowatt generate serve tiny-gpt`` (or any ``transformers`` causal LM folder)
serves it with continuous batching behind the OpenAI API at ``http://HOST:PORT/v1``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from kilowatt.serve.generate import GenerationEngine

__all__ = ["register"]

generate_app = typer.Typer(
    name="generate", help="Train a tiny decoder; serve causal LMs over the OpenAI API.",
    no_args_is_help=True,
)  # fmt: skip


@generate_app.command("train")
def train(
    out_dir: Path = typer.Argument(..., help="Folder to write the model to."),
    steps: int = typer.Option(200, min=1, help="Optimizer steps."),
    seed: int = typer.Option(0, help="Seed of the weights and the batches."),
) -> None:
    """Train kilowatt's tiny decoder on the text shipped with kilowatt."""
    from kilowatt.serve.generate import train_tiny_gpt

    folder = train_tiny_gpt(out_dir, steps=steps, seed=seed)
    typer.echo(f"trained {folder}; serve it with: kilowatt generate serve {folder}")


@generate_app.command("serve")
def serve(
    model_dir: Path = typer.Argument(..., help="A causal LM folder (kilowatt's or transformers')."),
    name: str = typer.Option(None, help="Model id clients ask for (default: folder name)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind."),
    port: int = typer.Option(8000, min=0, help="Port to bind (0: a free one, announced)."),
    kv_blocks: int = typer.Option(512, min=1, help="KV-cache blocks (the memory budget)."),
    block_size: int = typer.Option(16, min=1, help="Token slots per KV block."),
    max_running: int = typer.Option(64, min=1, help="Most sequences per step."),
    prefill_tokens: int = typer.Option(256, min=1, help="Most prompt tokens per step."),
    meter: bool = typer.Option(True, help="Measure joules per token with kilowatt.meter."),
    calibrate: bool = typer.Option(
        True, help="On exit, record the achieved fraction of peak for the serving planner."
    ),
    device: str = typer.Option("auto", help="torch device: auto (cuda when present), cpu, cuda."),
) -> None:
    """Serve a causal LM with continuous batching behind the OpenAI API."""
    import uvicorn

    from kilowatt.ports import announce, bound_url, listen
    from kilowatt.serve.generate import EngineConfig, build_generate_app

    energy = None
    if meter:
        from kilowatt.meter import EnergyMeter

        energy = EnergyMeter.for_this_process()
    config = EngineConfig(num_blocks=kv_blocks, block_size=block_size, max_running=max_running,
                          prefill_tokens_per_step=prefill_tokens)  # fmt: skip
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    app, engine = build_generate_app(
        model_dir, config=config, name=name, meter=energy, device=device
    )
    listener = listen(host, port)
    url = bound_url(listener, host, "http")
    announce("generate", url)
    typer.echo(f"serving {engine.runner.name!r} at {url}/v1 (OpenAI API)")
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[listener])
    if calibrate and device == "cpu":  # the catalog's cpu entry is the peak we know here
        record_serving_calibration(engine)


def record_serving_calibration(engine: GenerationEngine, catalog: Any = None) -> float | None:
    """Fold what ``engine`` achieved into the planner's calibration (CPU runs only here):
    the overall fraction of peak (throughput) and the prefill fraction (time to first token).

    Returns the recorded overall fraction of peak, or None when nothing was measured.
    """
    import torch

    from kilowatt.catalog import load_catalog
    from kilowatt.plan.calibration import record_measurement, serving_class

    achieved = engine.achieved_flops()
    if achieved is None:
        return None
    catalog = catalog or load_catalog()
    # A cpu catalog entry describes one core; the engine used torch's threads.
    peak = catalog.accelerator("cpu").peak_flops("fp32") * torch.get_num_threads()
    mfu = min(achieved / peak, 1.0)
    prefill = engine.achieved_prefill_flops()
    prefill_mfu = min(prefill / peak, 1.0) if prefill else None
    key = serving_class("transformer")
    entry = record_measurement(None, "cpu", key, mfu=mfu, prefill_mfu=prefill_mfu).entry("cpu", key)
    assert entry is not None
    typer.echo(f"calibration: cpu/{key} now {entry.mfu:.2%} of peak ({entry.samples} runs; "
               f"this one {mfu:.2%}, {achieved:.3g} FLOP/s)")  # fmt: skip
    if entry.prefill_mfu is not None and prefill is not None:
        typer.echo(f"calibration: cpu/{key} prefill now {entry.prefill_mfu:.2%} of peak "
                   f"({entry.prefill_samples} runs; this one {prefill:.3g} FLOP/s); the "
                   f"planner's time to first token uses it")  # fmt: skip
    return mfu


def register(app: typer.Typer) -> None:
    app.add_typer(generate_app)
