"""Capturing and restoring what exact resume needs beyond weights: RNG states, host copies."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["capture_rng", "restore_rng", "seed_everything", "to_host"]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def capture_rng() -> dict[str, Any]:
    """Every RNG state of this process: Python, NumPy, torch CPU and CUDA (if present)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch_cpu": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Put back what ``capture_rng`` took."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch_cpu"])
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["torch_cuda"])


def to_host(value: Any, buffers: dict[str, torch.Tensor] | None = None, path: str = "") -> Any:
    """A deep copy of ``value`` with every tensor copied to CPU memory.

    The copy is what the background writer serialises while training goes on changing
    the live tensors, so CPU tensors are cloned too, not just referenced. With ``buffers``
    (kept by the caller between saves), a tensor of the same shape and dtype at the same
    place is copied into last time's buffer: reusing memory avoids page-faulting hundreds
    of fresh megabytes on every checkpoint. The caller must not reuse buffers that a
    previous write may still be reading.
    """
    if isinstance(value, torch.Tensor):
        return _copy_tensor(value, buffers, path)
    if isinstance(value, dict):
        return {k: to_host(v, buffers, f"{path}/{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [to_host(v, buffers, f"{path}/{i}") for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return tuple(to_host(v, buffers, f"{path}/{i}") for i, v in enumerate(value))
    return value


def _copy_tensor(
    tensor: torch.Tensor, buffers: dict[str, torch.Tensor] | None, path: str
) -> torch.Tensor:
    source = tensor.detach()
    if buffers is None:
        return source.to("cpu", copy=True)
    buffer = buffers.get(path)
    if buffer is None or buffer.shape != source.shape or buffer.dtype != source.dtype:
        buffer = torch.empty(source.shape, dtype=source.dtype, device="cpu")
        buffers[path] = buffer
    buffer.copy_(source)
    return buffer
