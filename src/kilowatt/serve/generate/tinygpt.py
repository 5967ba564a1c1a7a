"""kilowatt's own small decoder (nanoGPT-shaped), a byte tokenizer, and a trainer that
fits it in seconds on the text shipped with the package.

>>> from kilowatt.serve.generate.tinygpt import train_tiny_gpt
>>> folder = train_tiny_gpt("tiny-gpt", steps=200)  # doctest: +SKIP

The folder holds ``config.json`` (``model_type: kilowatt-tinygpt``) and ``model.pt``; the
engine recognises it and serves it with a paged KV cache, since this model's attention
reads keys and values straight from the cache's blocks (``forward_paged``).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from kilowatt.errors import ServeError

__all__ = [
    "MODEL_TYPE",
    "ByteTokenizer",
    "PagedBatch",
    "TinyGPT",
    "TinyGPTConfig",
    "load_tiny_gpt",
    "save_tiny_gpt",
    "shipped_corpus",
    "train_tiny_gpt",
]

MODEL_TYPE = "kilowatt-tinygpt"


@dataclass(frozen=True)
class TinyGPTConfig:
    """Shape of the decoder. ``context`` is the longest prompt + answer it can attend to."""

    vocab_size: int = 256
    context: int = 256
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


class ByteTokenizer:
    """UTF-8 bytes as tokens: nothing to download, every string round-trips."""

    vocab_size = 256
    eos_token_id: int | None = None
    chat_template: str | None = None

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


@dataclass(frozen=True)
class PagedBatch:
    """One engine step for ``forward_paged``: B sequences, each feeding up to T new tokens.

    Attributes:
        tokens: [B, T] new token ids (rows padded past their length).
        positions: [B, T] absolute position of each new token.
        write_slots: [N] cache slot of each real (unpadded) new token, row-major.
        write_index: [N] flat index into [B*T] of those same tokens.
        read_slots: [B, L] cache slots of every token each row attends to (padded).
        mask: [B, 1, T, L] True where query t of row b may attend key l.
        last: [B] index of each row's last real token (whose logits are wanted).
    """

    tokens: torch.Tensor
    positions: torch.Tensor
    write_slots: torch.Tensor
    write_index: torch.Tensor
    read_slots: torch.Tensor
    mask: torch.Tensor
    last: torch.Tensor


class _Block(nn.Module):
    def __init__(self, cfg: TinyGPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.fc_out = nn.Linear(4 * cfg.n_embd, cfg.n_embd)

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, _ = x.shape
        q, k, v = self.qkv(self.ln_1(x)).split(self.cfg.n_embd, dim=2)
        shape = (b, t, self.cfg.n_head, self.cfg.head_dim)
        return q.view(shape), k.view(shape), v.view(shape)

    def _finish(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[:2]
        x = x + self.proj(attended.transpose(1, 2).reshape(b, t, self.cfg.n_embd))
        return x + self.fc_out(F.gelu(self.fc(self.ln_2(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(x)
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
        )
        return self._finish(x, y)

    def forward_paged(
        self, x: torch.Tensor, batch: PagedBatch, k_cache: torch.Tensor, v_cache: torch.Tensor
    ) -> torch.Tensor:
        q, k, v = self._heads(x)
        flat = (-1, self.cfg.n_head, self.cfg.head_dim)
        # Store the new keys/values in their blocks first, then read each row's whole
        # context (old and new) back through its block table.
        k_cache.index_copy_(
            0, batch.write_slots, k.reshape(flat).index_select(0, batch.write_index)
        )
        v_cache.index_copy_(
            0, batch.write_slots, v.reshape(flat).index_select(0, batch.write_index)
        )
        keys = k_cache[batch.read_slots].transpose(1, 2)  # [B, H, L, D]
        values = v_cache[batch.read_slots].transpose(1, 2)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), keys, values, attn_mask=batch.mask)
        return self._finish(x, y)


class TinyGPT(nn.Module):
    """A pre-LayerNorm GPT decoder with learned positions and a tied output head."""

    def __init__(self, cfg: TinyGPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.context, cfg.n_embd)
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.apply(_init_weights)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, V] of a full causal pass (training, and the reference generation)."""
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(positions)
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x) @ self.wte.weight.T

    def forward_paged(
        self, batch: PagedBatch, k_cache: torch.Tensor, v_cache: torch.Tensor
    ) -> torch.Tensor:
        """Logits [B, V] at each row's last new token, reading and writing the paged cache.

        ``k_cache``/``v_cache`` are [n_layer, slots, n_head, head_dim].
        """
        x = self.wte(batch.tokens) + self.wpe(batch.positions)
        for layer, block in enumerate(self.blocks):
            x = block.forward_paged(x, batch, k_cache[layer], v_cache[layer])
        rows = torch.arange(x.shape[0], device=x.device)
        return self.ln_f(x[rows, batch.last]) @ self.wte.weight.T

    def greedy(self, prompt: list[int], max_new_tokens: int) -> list[int]:
        """Step-by-step greedy generation with full recomputation: the reference answer."""
        ids = list(prompt)
        with torch.inference_mode():
            for _ in range(max_new_tokens):
                logits = self(torch.tensor([ids[-self.cfg.context :]]))
                ids.append(int(logits[0, -1].argmax()))
        return ids[len(prompt) :]


def _init_weights(module: nn.Module) -> None:
    # GPT-2's scheme: small normal weights keep the tied head's first logits near uniform.
    if isinstance(module, nn.Linear | nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def shipped_corpus() -> str:
    """The small English text shipped with kilowatt for training the tiny decoder."""
    return resources.files("kilowatt.serve.generate").joinpath("data/corpus.txt").read_text()


def train_tiny_gpt(
    out_dir: str | Path,
    *,
    steps: int = 200,
    config: TinyGPTConfig | None = None,
    text: str | None = None,
    seq_len: int = 48,
    batch_size: int = 8,
    lr: float = 3e-3,
    seed: int = 0,
) -> Path:
    """Train the tiny decoder on ``text`` (default: the shipped corpus) and save it.

    Args:
        out_dir: folder to write ``config.json`` and ``model.pt`` to.
        steps: optimizer steps (200 take a few seconds on an idle laptop core).
        config: model shape (default ``TinyGPTConfig()``).
        text: training text; at least ``seq_len + 1`` bytes.
        seq_len: tokens per training sample.
        batch_size: samples per step.
        lr: peak AdamW learning rate (cosine decay to a tenth).
        seed: makes the run and the weights reproducible.

    Returns:
        The model folder, servable with ``kilowatt generate serve``.
    """
    cfg = config or TinyGPTConfig()
    data = torch.tensor(ByteTokenizer().encode(text or shipped_corpus()), dtype=torch.long)
    if len(data) <= seq_len:
        raise ServeError(f"training text has {len(data)} bytes; give more than {seq_len}")
    torch.manual_seed(seed)
    model = TinyGPT(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = _cosine_lr(step, steps, lr)
        starts = torch.randint(len(data) - seq_len, (batch_size,), generator=generator)
        x = torch.stack([data[s : s + seq_len] for s in starts.tolist()])
        y = torch.stack([data[s + 1 : s + seq_len + 1] for s in starts.tolist()])
        loss = F.cross_entropy(model(x).reshape(-1, cfg.vocab_size), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return save_tiny_gpt(model.eval(), out_dir)


def _cosine_lr(step: int, steps: int, peak: float) -> float:
    # Cosine decay from the peak to a tenth of it: no warm-up needed at this size.
    progress = step / max(steps - 1, 1)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def save_tiny_gpt(model: TinyGPT, out_dir: str | Path) -> Path:
    """Write ``config.json`` and ``model.pt`` into ``out_dir``."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_type": MODEL_TYPE, "saved": time.time(), **asdict(model.cfg)}
    torch.save(model.state_dict(), folder / "model.pt")
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def load_tiny_gpt(folder: str | Path) -> TinyGPT:
    """Load a model folder written by ``save_tiny_gpt``."""
    folder = Path(folder)
    raw = json.loads((folder / "config.json").read_text())
    fields = {k: raw[k] for k in TinyGPTConfig.__dataclass_fields__ if k in raw}
    model = TinyGPT(TinyGPTConfig(**fields))
    model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
    return model.eval()
