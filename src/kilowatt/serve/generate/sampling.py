"""Sampling parameters and the next-token choice: greedy, temperature, top-p, seed."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kilowatt.serve.errors import InvalidInput

__all__ = ["SamplingParams", "choose_token"]


@dataclass(frozen=True)
class SamplingParams:
    """How one request picks its tokens and when it stops.

    Attributes:
        max_tokens: most tokens to generate.
        temperature: 0 picks the most likely token (greedy); higher flattens the choice.
        top_p: sample only from the smallest set of tokens whose probability reaches this.
        stop: strings that end the answer (not included in it).
        seed: makes a sampled answer reproducible.
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise InvalidInput(f"max_tokens must be at least 1, got {self.max_tokens}")
        if not 0 <= self.temperature <= 2:
            raise InvalidInput(f"temperature must be in [0, 2], got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise InvalidInput(f"top_p must be in (0, 1], got {self.top_p}")
        if any(not s for s in self.stop):
            raise InvalidInput("stop sequences must be non-empty strings")

    def generator(self) -> torch.Generator | None:
        """The request's own random stream (None for greedy)."""
        if self.temperature == 0:
            return None
        generator = torch.Generator()
        if self.seed is None:
            generator.seed()
        else:
            generator.manual_seed(self.seed)
        return generator


def choose_token(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None
) -> int:
    """The next token from one row of logits [V]."""
    if params.temperature == 0 or generator is None:
        return int(logits.argmax())
    # The request's generator lives on the CPU, so the draw does too.
    probs = torch.softmax(logits.float().cpu() / params.temperature, dim=-1)
    if params.top_p < 1:
        sorted_probs, order = probs.sort(descending=True)
        # Keep each token whose preceding mass is below top_p: the nucleus, never empty.
        keep = (sorted_probs.cumsum(-1) - sorted_probs) < params.top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator))
