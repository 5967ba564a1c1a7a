"""Build a small GPT-2-style ``transformers`` model folder offline, for tests and benchmarks.

The tokenizer is a byte-level BPE trained on the shipped corpus; the weights are random
unless trained afterwards. Nothing is downloaded.

>>> build_gpt2_folder("gpt2-tiny", n_layer=2, n_embd=64)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["build_gpt2_folder"]


def build_gpt2_folder(
    out_dir: str | Path,
    *,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_positions: int = 256,
    vocab_size: int = 512,
    seed: int = 0,
) -> Path:
    """Write a randomly initialised ``GPT2LMHeadModel`` and its tokenizer to ``out_dir``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from kilowatt.serve.generate.tinygpt import shipped_corpus

    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(shipped_corpus().splitlines(), trainer)
    PreTrainedTokenizerFast(tokenizer_object=bpe).save_pretrained(folder)
    config = GPT2Config(
        vocab_size=bpe.get_vocab_size(),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        bos_token_id=None,
        eos_token_id=None,
    )
    torch.manual_seed(seed)
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder
