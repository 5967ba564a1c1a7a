"""Causal language models behind one step interface the engine drives.

Two runners:

- ``PagedRunner`` serves kilowatt's own decoder with a real paged KV cache: one pool of
  blocks per layer, attention reading each sequence's keys through its block table.
- ``HFRunner`` serves any ``transformers`` causal LM from a local folder. Its attention is
  the library's, so each cached sequence owns one row (slot) of preallocated per-layer
  key/value buffers, its token at position p in column p. A decode step feeds one token
  per row, writes each new key and value in place at its row's length, and passes a
  padding mask and position ids, so sequences join and leave the batch without copying
  the others' caches. First prompt chunks run together, left-padded, and later chunks one
  sequence at a time; each chunk's result is stored into its slot. The block manager
  still budgets the memory in blocks of tokens.

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
            read_slots[row, :end] = _slots_of(blocks, item.seq_id)[:end]
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


def _slots_of(blocks: BlockManager, seq_id: str) -> torch.Tensor:
    """Every cache slot of ``seq_id``'s blocks, in position order (one tensor op, not a
    lookup per position: this runs for every sequence at every step)."""
    table = torch.tensor(blocks.table(seq_id), dtype=torch.long)
    offsets = torch.arange(blocks.block_size)
    return (table[:, None] * blocks.block_size + offsets).flatten()


class HFRunner:
    """A ``transformers`` causal LM whose sequences keep their caches in batch slots."""

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
        self._slots = _Slots(self.context)
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
        decode = [i for i, w in enumerate(work) if len(w.tokens) == 1 and w.seq_id in self._slots]
        fresh = [i for i, w in enumerate(work) if w.start == 0 and i not in decode]
        with torch.inference_mode():
            # Decoders first: a sequence put in a slot by this step's prefill would only
            # ride along the decode pass as an idle row.
            if decode:
                logits = self._decode([work[i] for i in decode])
                rows.update(zip(decode, logits, strict=True))
            if fresh:
                logits = self._prefill_fresh([work[i] for i in fresh])
                rows.update(zip(fresh, logits, strict=True))
            for i, item in enumerate(work):
                if i not in decode and i not in fresh:
                    rows[i] = self._prefill(item)
        return torch.stack([rows[i] for i in range(len(work))])

    def _prefill(self, item: StepInput) -> torch.Tensor:
        past = self._slots.cached(item.seq_id) if item.start else []
        end = item.start + len(item.tokens)
        out = self._forward(
            input_ids=torch.tensor([item.tokens]),
            attention_mask=torch.ones((1, end), dtype=torch.long),
            position_ids=torch.arange(item.start, end).unsqueeze(0),
            cache=_growing_cache(past),
        )
        self._slots.put(item.seq_id, [(lay.keys, lay.values) for lay in out.cache.layers])
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
            self._slots.put(
                item.seq_id,
                [
                    (lay.keys[row : row + 1, :, keep], lay.values[row : row + 1, :, keep])
                    for lay in out.cache.layers
                ],
            )
        return out.logits[:, -1]

    def _decode(self, work: list[StepInput]) -> torch.Tensor:
        """One token for every decoding sequence, written in place into its slot's row.

        The pass covers every occupied slot (rows 0..n-1, a plain view of the buffers);
        a row whose sequence is between prompt chunks is fed a placeholder token whose key
        lands past its cached length, where its next chunk overwrites it.
        """
        slots = self._slots
        lengths = torch.tensor(slots.lengths)
        width = int(lengths.max()) + 1
        slots.reserve(len(slots.lengths), width)
        tokens = torch.zeros((len(lengths), 1), dtype=torch.long)
        rows = [slots.row[item.seq_id] for item in work]
        tokens[rows, 0] = torch.tensor([item.tokens[0] for item in work])
        visible = (torch.arange(width) <= lengths[:, None])[:, None, None, :]
        device = self.model.device
        out = self._forward(
            input_ids=tokens,
            attention_mask=self._attention_mask(visible),
            position_ids=lengths[:, None],
            cache=slots.decode_cache(lengths.to(device), width),
        )
        for row in rows:
            slots.lengths[row] += 1
        return out.logits[rows, -1]

    def _attention_mask(self, visible: torch.Tensor) -> torch.Tensor:
        """A 4-D mask in the form the model's attention takes (boolean, or additive)."""
        if self.model.config._attn_implementation != "eager":
            return visible
        dtype = next(self.model.parameters()).dtype
        blocked = torch.full(visible.shape, torch.finfo(dtype).min, dtype=dtype)
        return blocked.masked_fill(visible, 0.0)

    def _forward(self, cache: Any, **inputs: Any) -> _StepOutput:
        device = self.model.device
        inputs = {key: tensor.to(device) for key, tensor in inputs.items()}
        out = self.model(**inputs, **{self._cache_arg: cache}, use_cache=True)
        returned = getattr(out, "cache", None) or out.past_key_values
        return _StepOutput(out.logits, returned)

    def release(self, seq_id: str) -> None:
        with torch.inference_mode():  # the buffers are inference tensors
            self._slots.drop(seq_id)


@dataclass(frozen=True)
class _StepOutput:
    logits: torch.Tensor
    cache: Any  # a transformers Cache; its layers hold ``keys``/``values`` [B, H, L, D]


class _Slots:
    """Every cached sequence's keys and values: one row (slot) each of per-layer buffers.

    Buffers are [rows, heads, columns, head_dim]; a sequence's token at position p sits in
    column p of its row. Occupied rows are always 0..n-1: a leaving sequence's row is
    refilled by the last row's, so a decode pass reads one view of the buffers and joining
    or leaving copies one sequence's cache, never the batch's. Rows and columns grow by
    doubling (columns up to the model's context).
    """

    def __init__(self, context: int) -> None:
        self.context = context
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.ids: list[str] = []
        self.lengths: list[int] = []
        self.row: dict[str, int] = {}

    def __contains__(self, seq_id: object) -> bool:
        return seq_id in self.row

    def put(self, seq_id: str, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Store a sequence's whole cache (layers of [1, heads, length, head_dim])."""
        length = layers[0][0].shape[2]
        if not self.keys:
            self.keys = [k.new_zeros(_buffer_shape(k, 1, length)) for k, _ in layers]
            self.values = [v.new_zeros(_buffer_shape(v, 1, length)) for _, v in layers]
        row = self.row.get(seq_id)
        if row is None:
            row = self.row[seq_id] = len(self.ids)
            self.ids.append(seq_id)
            self.lengths.append(0)
        self.reserve(row + 1, length)
        for buffer, (keys, _) in zip(self.keys, layers, strict=True):
            buffer[row, :, :length] = keys[0]
        for buffer, (_, values) in zip(self.values, layers, strict=True):
            buffer[row, :, :length] = values[0]
        self.lengths[row] = length

    def cached(self, seq_id: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Views of a sequence's cache, [1, heads, length, head_dim] per layer."""
        row, length = self.row[seq_id], self.lengths[self.row[seq_id]]
        return [
            (k[row : row + 1, :, :length], v[row : row + 1, :, :length])
            for k, v in zip(self.keys, self.values, strict=True)
        ]

    def drop(self, seq_id: str) -> None:
        row = self.row.pop(seq_id, None)
        if row is None:
            return
        last = len(self.ids) - 1
        if row != last:
            moved, length = self.ids[last], self.lengths[last]
            for buffer in (*self.keys, *self.values):
                buffer[row, :, :length] = buffer[last, :, :length]
            self.ids[row], self.lengths[row] = moved, length
            self.row[moved] = row
        self.ids.pop()
        self.lengths.pop()

    def reserve(self, rows: int, columns: int) -> None:
        """Grow the buffers (keeping their contents) to at least ``rows`` x ``columns``."""
        held_rows, held_columns = self.keys[0].shape[0], self.keys[0].shape[2]
        if rows <= held_rows and columns <= held_columns:
            return
        new_rows = max(rows, 2 * held_rows) if rows > held_rows else held_rows
        new_columns = held_columns
        if columns > held_columns:
            new_columns = max(columns, min(2 * held_columns, self.context))
        self.keys = [_regrown(b, new_rows, new_columns) for b in self.keys]
        self.values = [_regrown(b, new_rows, new_columns) for b in self.values]

    def decode_cache(self, lengths: torch.Tensor, width: int) -> Any:
        """A transformers cache whose layers write row r's new key at column lengths[r]."""
        from transformers import DynamicCache

        layer_class = _slot_layer_class()
        cache = DynamicCache()
        cache.layers = [
            layer_class(keys, values, lengths, width)
            for keys, values in zip(self.keys, self.values, strict=True)
        ]
        return cache


def _buffer_shape(like: torch.Tensor, rows: int, columns: int) -> tuple[int, ...]:
    return (max(rows, 8), like.shape[1], max(columns, 64), like.shape[3])


def _regrown(buffer: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
    grown = buffer.new_zeros((rows, buffer.shape[1], columns, buffer.shape[3]))
    grown[: buffer.shape[0], :, : buffer.shape[2]] = buffer
    return grown


@functools.cache
def _slot_layer_class() -> type:
    from transformers.cache_utils import DynamicLayer

    class SlotLayer(DynamicLayer):  # type: ignore[misc]
        """One layer of a decode pass over slot buffers: writes in place, returns views."""

        def __init__(
            self, keys: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor, width: int
        ) -> None:
            super().__init__()
            rows = lengths.shape[0]
            self._targets = (torch.arange(rows, device=lengths.device), lengths)
            self._keys_buffer, self._values_buffer = keys, values
            self.keys, self.values = keys[:rows, :, :width], values[:rows, :, :width]
            self.device = keys.device
            self.is_initialized = True

        def update(
            self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
        ) -> tuple[torch.Tensor, torch.Tensor]:
            rows, columns = self._targets
            self._keys_buffer[rows, :, columns] = key_states[:, :, 0]
            self._values_buffer[rows, :, columns] = value_states[:, :, 0]
            return self.keys, self.values

    return SlotLayer


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
