"""Generative serving: continuous batching of token generation over a paged KV cache,
behind an OpenAI-compatible API, with time to first token and joules per token.

>>> from kilowatt.serve.generate import serve_generate, train_tiny_gpt
>>> serve_generate(train_tiny_gpt("tiny-gpt"), port=8000)  # doctest: +SKIP

Then any OpenAI client works against ``http://127.0.0.1:8000/v1``.
"""

from __future__ import annotations

from kilowatt.serve.generate.blocks import BlockManager
from kilowatt.serve.generate.engine import (
    EngineConfig,
    Finished,
    GenerationEngine,
    GenerationReport,
    GenerationStream,
    TokenDelta,
)
from kilowatt.serve.generate.lm import HFRunner, PagedRunner, load_runner, looks_generative
from kilowatt.serve.generate.metrics import GenerateMetrics
from kilowatt.serve.generate.sampling import SamplingParams
from kilowatt.serve.generate.server import build_generate_app, serve_generate
from kilowatt.serve.generate.tinygpt import TinyGPT, TinyGPTConfig, train_tiny_gpt

__all__ = [
    "BlockManager",
    "EngineConfig",
    "Finished",
    "GenerateMetrics",
    "GenerationEngine",
    "GenerationReport",
    "GenerationStream",
    "HFRunner",
    "PagedRunner",
    "SamplingParams",
    "TinyGPT",
    "TinyGPTConfig",
    "TokenDelta",
    "build_generate_app",
    "load_runner",
    "looks_generative",
    "serve_generate",
    "train_tiny_gpt",
]
