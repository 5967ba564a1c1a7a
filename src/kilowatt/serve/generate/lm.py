"""Causal language models behind one step interface the engine drives.

Two runners:

- ``PagedRunner`` serves kilowatt's own decoder with a real paged KV cache: one pool of
  blocks per layer, attention reading each sequence's keys through its block table.
- ``HFRunner`` serves any ``transformers`` causal LM from a local folder. Its attention is
  the library's, so the cache is kept per sequence and gathered when the batch changes:
  decoding sequences are left-padded to one batch (attention mask and position ids say
  where each starts), which keeps decoding while the same sequences stay, and is split back
  into per-sequence caches when one joins or leaves; first prompt chunks run together,
  left-padded, and later chunks one sequence at a time. The block manager still budgets
  its memory in blocks of tokens.

Both return the logits at each sequence's last new token.
"""

from __future__ import annotations

import functools
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from kilowatt.errors import ServeError
from kilowatt.serve.errors import InvalidInput
from kilowatt.serve.generate.blocks import BlockManager
from kilowatt.serve.generate.tinygpt import MODEL_TYPE, ByteTokenizer, TinyGPT, load_tiny_gpt

__all__ = ["HFRunner", "LMRunner", "PagedRunner", "StepInput", "load_runner", "looks_generative"]


@dataclass(frozen=True)
class StepInput:
    """One sequence's share of a step: ``tokens`` fed at positions ``start, start+1, ...``."""

    seq_id: str
    tokens: list[int]
    start: int


class LMRunner(Protocol):
    """What the engine needs of a model."""

    name: str
    context: int
    tokenizer: Any
    kv_bytes_per_token: int
    parameters: int

    def step(self, work: list[StepInput], blocks: BlockManager) -> torch.Tensor:
        """Run one step; logits [len(work), vocab] at each sequence's last new token."""
        ...

    def release(self, seq_id: str) -> None:
        """Forget what the runner keeps for ``seq_id`` (its blocks are the manager's)."""
        ...


def looks_generative(folder: str | Path) -> bool:
    """Whether ``folder`` holds a causal LM this package can serve (kilowatt's or HF's)."""
    config = Path(folder) / "config.json"
    if not config.is_file():
        return False
    try:
        raw = json.loads(config.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if raw.get("model_type") == MODEL_TYPE:
        return True
    return any(
        str(a).endswith(("ForCausalLM", "LMHeadModel")) for a in raw.get("architectures", [])
    )


def load_runner(
    folder: str | Path,
    *,
    num_blocks: int,
    block_size: int,
    name: str | None = None,
    device: str = "cpu",
) -> LMRunner:
    """Load the causal LM in ``folder`` (nothing is downloaded) and its tokenizer.

    ``device`` is a torch device (``cpu``, ``cuda``, ``cuda:1``); weights and KV cache live
    there, the scheduler's bookkeeping on the CPU.
    """
    path = Path(folder)
    if not looks_generative(path):
        raise ServeError(
            f"{path} is not a causal language model folder (no config.json naming a "
            "*ForCausalLM architecture or kilowatt-tinygpt); train one with "
            "`kilowatt generate train DIR` or point at a transformers model folder"
        )
    label = name or path.resolve().name
    if json.loads((path / "config.json").read_text()).get("model_type") == MODEL_TYPE:
        model = load_tiny_gpt(path).to(device)
        return PagedRunner(model, num_blocks, block_size, name=label)
    return HFRunner.from_folder(path, name=label, device=device)


class PagedRunner:
    """kilowatt's decoder over a paged KV cache of ``num_blocks`` x ``block_size`` slots."""

    def __init__(self, model: TinyGPT, num_blocks: int, block_size: int, name: str) -> None:
        cfg = model.cfg
        self.model = model
        self.name = name
        self.context = cfg.context
        self.tokenizer = ByteTokenizer()
        weight = next(model.parameters())
        self.device = weight.device
        shape = (cfg.n_layer, num_blocks * block_size, cfg.n_head, cfg.head_dim)
        self.k_cache = torch.zeros(shape, dtype=weight.dtype, device=self.device)
        self.v_cache = torch.zeros(shape, dtype=weight.dtype, device=self.device)
        self.kv_bytes_per_token = 2 * cfg.n_layer * cfg.n_embd * self.k_cache.element_size()
        self.parameters = sum(p.numel() for p in model.parameters())

    def step(self, work: list[StepInput], blocks: BlockManager) -> torch.Tensor:
        from kilowatt.serve.generate.tinygpt import PagedBatch

        width = max(len(w.tokens) for w in work)
        context = max(w.start + len(w.tokens) for w in work)
        tokens = torch.zeros((len(work), width), dtype=torch.long)
        positions = torch.zeros((len(work), width), dtype=torch.long)
        read_slots = torch.zeros((len(work), context), dtype=torch.long)
        mask = torch.zeros((len(work), 1, width, context), dtype=torch.bool)
        mask[..., 0] = True  # padded query rows attend something, so no row is all -inf
        write_slots, write_index, last = [], [], []
        for row, item in enumerate(work):
            n, end = len(item.tokens), item.start + len(item.tokens)
            tokens[row, :n] = torch.tensor(item.tokens)
            positions[row, :n] = torch.arange(item.start, end)
            read_slots[row, :end] = torch.tensor([blocks.slot(item.seq_id, p) for p in range(end)])
            causal = torch.ones((n, end), dtype=torch.bool).tril(diagonal=item.start)
            mask[row, 0, :n, :end] = causal
            write_slots.extend(read_slots[row, item.start : end].tolist())
            write_index.extend(range(row * width, row * width + n))
            last.append(n - 1)
        # Built on the CPU, then one copy each to the model's device.
        batch = PagedBatch(
            tokens=tokens.to(self.device),
            positions=positions.to(self.device),
            write_slots=torch.tensor(write_slots, device=self.device),
            write_index=torch.tensor(write_index, device=self.device),
            read_slots=read_slots.to(self.device),
            mask=mask.to(self.device),
            last=torch.tensor(last, device=self.device),
        )
        with torch.inference_mode():
            return self.model.forward_paged(batch, self.k_cache, self.v_cache)

    def release(self, seq_id: str) -> None:
        """Nothing to do: the sequence's slots are simply overwritten by their next owner."""


class HFRunner:
    """A ``transformers`` causal LM with a per-sequence cache gathered per step."""

    def __init__(self, model: Any, tokenizer: Any, name: str) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        config = model.config
        self.context = int(
            getattr(config, "max_position_embeddings", None)
            or getattr(config, "n_positions", None)
            or tokenizer.model_max_length
        )
        layers = getattr(config, "num_hidden_layers", None) or config.n_layer
        hidden = getattr(config, "hidden_size", None) or config.n_embd
        heads = getattr(config, "num_attention_heads", None) or config.n_head
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        element = next(model.parameters()).element_size()
        self.kv_bytes_per_token = 2 * layers * (hidden // heads) * kv_heads * element
        self.parameters = sum(p.numel() for p in model.parameters())
        self._cache: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._live: _LiveBatch | None = None
        # transformers 5.2x renamed ``past_key_values`` to ``cache``; speak whichever it takes.
        accepts = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in accepts else "past_key_values"

    @classmethod
    def from_folder(cls, path: Path, name: str, device: str = "cpu") -> HFRunner:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ServeError(f"cannot load the causal LM in {path}: {exc}") from exc
        return cls(model.to(device).eval(), tokenizer, name)

    def step(self, work: list[StepInput], blocks: BlockManager) -> torch.Tensor:
        rows: dict[int, torch.Tensor] = {}
        decode = [i for i, w in enumerate(work) if len(w.tokens) == 1 and self._has(w.seq_id)]
        fresh = [i for i, w in enumerate(work) if w.start == 0 and i not in decode]
        with torch.inference_mode():
            if fresh:
                logits = self._prefill_fresh([work[i] for i in fresh])
                rows.update(zip(fresh, logits, strict=True))
            for i, item in enumerate(work):
                if i not in decode and i not in fresh:
                    rows[i] = self._prefill(item)
            if decode:
                logits = self._decode([work[i] for i in decode])
                rows.update(zip(decode, logits, strict=True))
        return torch.stack([rows[i] for i in range(len(work))])

    def _has(self, seq_id: str) -> bool:
        live = self._live
        return seq_id in self._cache or (live is not None and seq_id in live.alive)

    def _prefill(self, item: StepInput) -> torch.Tensor:
        past = self._cache.get(item.seq_id, []) if item.start else []
        end = item.start + len(item.tokens)
        out = self._forward(
            input_ids=torch.tensor([item.tokens]),
            attention_mask=torch.ones((1, end), dtype=torch.long),
            position_ids=torch.arange(item.start, end).unsqueeze(0),
            cache=_growing_cache(past),
        )
        self._cache[item.seq_id] = [(lay.keys, lay.values) for lay in out.cache.layers]
        return out.logits[0, -1]

    def _prefill_fresh(self, work: list[StepInput]) -> torch.Tensor:
        """First prompt chunks of several sequences in one left-padded forward pass."""
        longest = max(len(item.tokens) for item in work)
        ids = torch.zeros((len(work), longest), dtype=torch.long)
        mask = torch.zeros((len(work), longest), dtype=torch.long)
        positions = torch.zeros((len(work), longest), dtype=torch.long)
        for row, item in enumerate(work):
            offset = longest - len(item.tokens)
            ids[row, offset:] = torch.tensor(item.tokens)
            mask[row, offset:] = 1
            positions[row, offset:] = torch.arange(len(item.tokens))
        out = self._forward(
            input_ids=ids, attention_mask=mask, position_ids=positions, cache=_growing_cache()
        )
        for row, item in enumerate(work):
            keep = slice(longest - len(item.tokens), None)
            self._cache[item.seq_id] = [
                (lay.keys[row : row + 1, :, keep], lay.values[row : row + 1, :, keep])
                for lay in out.cache.layers
            ]
        return out.logits[:, -1]

    def _decode(self, work: list[StepInput]) -> torch.Tensor:
        ids = tuple(item.seq_id for item in work)
        live = self._live
        if live is not None and live.ids == ids:
            # The same sequences as last step: keep decoding into last step's batch cache.
            cache, offsets = live.cache, live.offsets
            mask = torch.cat([live.mask, torch.ones((len(ids), 1), dtype=torch.long)], dim=1)
        else:
            self._split_live()
            cache, mask, offsets = self._gather(work)
        out = self._forward(
            input_ids=torch.tensor([item.tokens for item in work]),
            attention_mask=mask,
            position_ids=torch.tensor([[item.start] for item in work]),
            cache=cache,
        )
        self._live = _LiveBatch(ids, set(ids), out.cache, mask, offsets)
        return out.logits[:, -1]

    def _gather(self, work: list[StepInput]) -> tuple[Any, torch.Tensor, list[int]]:
        """Left-pad each sequence's cache to the longest and stack them into one batch."""
        lengths = [item.start for item in work]
        longest = max(lengths)
        per_seq = [self._cache.pop(item.seq_id) for item in work]
        past = []
        for layer in range(len(per_seq[0])):
            keys = [_left_pad(kv[layer][0], longest) for kv in per_seq]
            values = [_left_pad(kv[layer][1], longest) for kv in per_seq]
            past.append((torch.cat(keys), torch.cat(values)))
        mask = torch.zeros((len(work), longest + 1), dtype=torch.long)
        offsets = [longest - length for length in lengths]
        for row, offset in enumerate(offsets):
            mask[row, offset:] = 1
        return _growing_cache(past), mask, offsets

    def _split_live(self) -> None:
        """Hand the rows of last step's batch cache back to their sequences."""
        live, self._live = self._live, None
        if live is None:
            return
        for row, seq_id in enumerate(live.ids):
            if seq_id in live.alive:
                keep = slice(live.offsets[row], None)
                self._cache[seq_id] = [
                    (lay.keys[row : row + 1, :, keep], lay.values[row : row + 1, :, keep])
                    for lay in live.cache.layers
                ]

    def _forward(self, cache: Any, **inputs: Any) -> _StepOutput:
        device = self.model.device
        inputs = {key: tensor.to(device) for key, tensor in inputs.items()}
        out = self.model(**inputs, **{self._cache_arg: cache}, use_cache=True)
        returned = getattr(out, "cache", None) or out.past_key_values
        return _StepOutput(out.logits, returned)

    def release(self, seq_id: str) -> None:
        self._cache.pop(seq_id, None)
        if self._live is not None:
            self._live.alive.discard(seq_id)


@dataclass(frozen=True)
class _StepOutput:
    logits: torch.Tensor
    cache: Any  # a transformers Cache; its layers hold ``keys``/``values`` [B, H, L, D]


@dataclass(frozen=True)
class _LiveBatch:
    """Last decode step's batch cache, reused while the same sequences keep decoding."""

    ids: tuple[str, ...]
    alive: set[str]
    cache: Any
    mask: torch.Tensor
    offsets: list[int]


def _growing_cache(past: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> Any:
    """A transformers ``DynamicCache`` whose layers append into spare room.

    The stock layer concatenates the whole cache with each new token, copying every key and
    value of the batch at every step; this one doubles its buffer when full instead.
    """
    from transformers import DynamicCache

    cache = DynamicCache()
    cache.layer_class_to_replicate = _growing_layer_class()
    for index, (keys, values) in enumerate(past or []):
        cache.update(keys, values, index)
    return cache


@functools.cache
def _growing_layer_class() -> type:
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):  # type: ignore[misc]
        _keys_buffer: torch.Tensor | None = None
        _values_buffer: torch.Tensor | None = None

        def update(
            self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
        ) -> tuple[torch.Tensor, torch.Tensor]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            held = self.keys.shape[-2] if self.keys.numel() else 0
            end = held + key_states.shape[-2]
            buffer = self._keys_buffer
            if buffer is None or buffer.shape[-2] < end or buffer.shape[0] != key_states.shape[0]:
                self._keys_buffer = _grown(self.keys, key_states, held, end)
                self._values_buffer = _grown(self.values, value_states, held, end)
            assert self._keys_buffer is not None and self._values_buffer is not None
            self._keys_buffer[..., held:end, :] = key_states
            self._values_buffer[..., held:end, :] = value_states
            self.keys = self._keys_buffer[..., :end, :]
            self.values = self._values_buffer[..., :end, :]
            return self.keys, self.values

    return GrowingLayer


def _grown(old: torch.Tensor, new: torch.Tensor, held: int, end: int) -> torch.Tensor:
    """A buffer with room for twice ``end`` positions, holding ``old``'s first ``held``."""
    buffer = new.new_empty((*new.shape[:2], max(2 * end, 64), new.shape[-1]))
    if held:
        buffer[..., :held, :] = old
    return buffer


def _left_pad(tensor: torch.Tensor, length: int) -> torch.Tensor:
    missing = length - tensor.shape[2]
    if missing == 0:
        return tensor
    pad = tensor.new_zeros((*tensor.shape[:2], missing, tensor.shape[3]))
    return torch.cat([pad, tensor], dim=2)


def check_prompt(runner: LMRunner, prompt_tokens: int, max_tokens: int) -> None:
    """Refuse a request that cannot fit the model's context."""
    if prompt_tokens == 0:
        raise InvalidInput("the prompt is empty; send at least one token of text")
    if prompt_tokens + max_tokens > runner.context:
        raise InvalidInput(
            f"the prompt has {prompt_tokens} tokens and max_tokens is {max_tokens}: "
            f"{prompt_tokens + max_tokens} > the model's context of {runner.context} tokens; "
            "shorten the prompt or lower max_tokens"
        )
