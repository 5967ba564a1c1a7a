"""Incremental detokenization: the text and the stream equal decoding the whole answer.

The tokenizers are built offline: raw bytes, the GPT-2-style byte-level BPE the generate
tests serve, and SentencePiece-like (metaspace), WordPiece and Llama-like (byte fallback)
ones trained here on the shipped corpus, which is ASCII, so the multi-byte characters
below are split over several tokens.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from kilowatt.serve.generate.blocks import BlockManager
from kilowatt.serve.generate.detokenize import IncrementalDetokenizer
from kilowatt.serve.generate.engine import (
    EngineConfig,
    Finished,
    GenerationEngine,
    _earliest_stop,
    _held_back,
)
from kilowatt.serve.generate.hfbuild import build_gpt2_folder
from kilowatt.serve.generate.lm import StepInput
from kilowatt.serve.generate.sampling import SamplingParams
from kilowatt.serve.generate.tinygpt import ByteTokenizer, shipped_corpus

ANSWER = "Grid 🙂👍🏽 at 5 €, 日本語 ok; the family 👨‍👩‍👧 waits."
TEXTS = [ANSWER, "café naïve — 한국어 텍스트", "a  b\n\n c , . !"]


Stream = tuple[list[str], str, str]  # the deltas, the final text, the finish reason


def _wrap(model: Tokenizer, trainer: Any, **special: str) -> PreTrainedTokenizerFast:
    model.train_from_iterator(shipped_corpus().splitlines(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=model, **special)


def _metaspace() -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    specials = ["<unk>", "</s>"]
    trainer = trainers.UnigramTrainer(
        vocab_size=400, special_tokens=specials, unk_token="<unk>", show_progress=False
    )
    return _wrap(tokenizer, trainer, unk_token="<unk>", eos_token="</s>")


def _wordpiece() -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer()
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    specials = ["[UNK]", "[SEP]"]
    trainer = trainers.WordPieceTrainer(
        vocab_size=400, special_tokens=specials, show_progress=False
    )
    return _wrap(tokenizer, trainer, unk_token="[UNK]", eos_token="[SEP]")


def _byte_fallback() -> PreTrainedTokenizerFast:
    # Llama 2's layout: "▁" for spaces, <0xNN> tokens for bytes outside the vocabulary.
    tokenizer = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
    )
    tokenizer.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    specials = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256))]
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials, show_progress=False)
    return _wrap(tokenizer, trainer, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    gpt2 = build_gpt2_folder(tmp_path_factory.mktemp("gpt2"), n_positions=128)
    return {
        "bytes": ByteTokenizer(),
        "gpt2-bpe": AutoTokenizer.from_pretrained(gpt2, local_files_only=True),
        "metaspace": _metaspace(),
        "wordpiece": _wordpiece(),
        "byte-fallback": _byte_fallback(),
    }


# Decoding a list joins the decodings of its parts at character boundaries. Name -> whether
# it splits multi-byte characters over tokens; the others test the context a window needs
# (the leading space SentencePiece drops, WordPiece's ## pieces).
JOINING = {"bytes": True, "gpt2-bpe": True, "metaspace": False, "wordpiece": False}


def _encode(tokenizer: Any, text: str) -> list[int]:
    if isinstance(tokenizer, PreTrainedTokenizerFast):
        return list(tokenizer.encode(text, add_special_tokens=False))
    return tokenizer.encode(text)


def _answers(tokenizer: Any) -> list[list[int]]:
    """The texts' tokens, and random token lists (invalid UTF-8, special tokens midway)."""
    rng = random.Random(0)
    size = len(tokenizer) if isinstance(tokenizer, PreTrainedTokenizerFast) else 256
    noise = [[rng.randrange(size) for _ in range(40)] for _ in range(50)]
    return [_encode(tokenizer, text) for text in TEXTS] + noise


def _splits_a_character(tokenizer: Any, ids: list[int]) -> bool:
    return any(tokenizer.decode([i]).endswith("\ufffd") for i in ids)


@pytest.mark.parametrize("name", JOINING)
def test_the_text_after_every_token_equals_decoding_all_of_them(
    tokenizers: dict[str, Any], name: str
) -> None:
    tokenizer = tokenizers[name]
    answers = _answers(tokenizer)
    assert _splits_a_character(tokenizer, answers[0]) == JOINING[name]
    for ids in answers:
        incremental = IncrementalDetokenizer(tokenizer)
        for n in range(1, len(ids) + 1):
            assert incremental.append(ids[n - 1]) == tokenizer.decode(ids[:n]), ids[:n]


def test_byte_fallback_text_equals_decoding_all_once_each_character_is_complete(
    tokenizers: dict[str, Any],
) -> None:
    # A byte-fallback decoder turns a whole run of byte tokens into U+FFFD while its last
    # character is incomplete, even the complete characters before it; the incremental
    # text keeps those. Whenever the whole decoding has no U+FFFD the two agree.
    tokenizer = tokenizers["byte-fallback"]
    assert _splits_a_character(tokenizer, _encode(tokenizer, ANSWER))
    for text in TEXTS:
        ids = _encode(tokenizer, text)
        incremental = IncrementalDetokenizer(tokenizer)
        for n in range(1, len(ids) + 1):
            got = incremental.append(ids[n - 1])
            whole = tokenizer.decode(ids[:n])
            if "\ufffd" not in whole:
                assert got == whole
        assert incremental.text == text


class ScriptedRunner:
    """Answers every one-token prompt with ``answer``, one token per step."""

    name = "scripted"
    context = 512
    kv_bytes_per_token = 1
    parameters = 1

    def __init__(self, tokenizer: Any, answer: list[int]) -> None:
        self.tokenizer = tokenizer
        self.answer = answer

    def step(self, work: list[StepInput], blocks: BlockManager) -> torch.Tensor:
        logits = torch.zeros(len(work), max(self.answer) + 1)
        for row, item in enumerate(work):
            made = item.start + len(item.tokens) - 1  # answer tokens fed so far
            logits[row, self.answer[made]] = 1.0
        return logits

    def release(self, seq_id: str) -> None:
        pass


def redecoded(tokenizer: Any, answer: list[int], params: SamplingParams) -> Stream:
    """The deltas, final text and reason of the engine when it decoded the whole answer at
    every token (its behaviour before incremental detokenization)."""
    emitted, deltas = "", []
    for n in range(1, params.max_tokens + 1):
        text, reason = tokenizer.decode(answer[:n]), None
        cut = _earliest_stop(text, params.stop)
        if cut is not None:
            text, reason = text[:cut], "stop"
        elif answer[n - 1] == getattr(tokenizer, "eos_token_id", None):
            text, reason = tokenizer.decode(answer[: n - 1]), "stop"
        elif n == params.max_tokens:
            reason = "length"
        safe = text if reason else _held_back(text, params.stop)
        if len(safe) > len(emitted) or not reason:
            deltas.append(safe[len(emitted) :])
            emitted = safe
        if reason:
            return deltas, text, reason
    raise AssertionError("unreachable: the last token ends the answer")


def streamed(tokenizer: Any, answer: list[int], params: SamplingParams) -> Stream:
    """The deltas, final text and reason the engine streams for ``answer``."""
    engine = GenerationEngine(ScriptedRunner(tokenizer, answer), EngineConfig(64, 8))
    engine.start()

    async def collect() -> Stream:
        deltas = []
        async for item in await engine.submit([0], params):
            if isinstance(item, Finished):
                return deltas, item.text, item.finish_reason
            deltas.append(item.text)
        raise AssertionError("no Finished")

    try:
        return asyncio.run(collect())
    finally:
        engine.close()


def _spans_tokens(tokenizer: Any, answer: list[int], stops: tuple[str, ...]) -> bool:
    return not any(s in tokenizer.decode([i]) for s in stops for i in answer)


# Stop strings spanning tokens. ASCII ones for every tokenizer: one met, one met after a
# held-back prefix ("the f") was released, one never met. Multi-byte ones for those that
# split characters: across an emoji's bytes and a word, inside a CJK run, and after a
# held-back prefix that ends inside a character.
ASCII_STOPS = [("e fam",), ("the fX", "amily"), ("never",)]
MULTIBYTE_STOPS = [("🏽 at",), ("本語",), ("5 €, 日本X", ", 日")]
CASES = [(name, stop) for name in JOINING for stop in ASCII_STOPS] + [
    (name, stop) for name, splits in JOINING.items() if splits for stop in MULTIBYTE_STOPS
]


@pytest.mark.parametrize(("name", "stop"), CASES, ids=[f"{n}-{s}" for n, s in CASES])
def test_the_stream_equals_the_one_of_decoding_the_whole_answer(
    tokenizers: dict[str, Any], name: str, stop: tuple[str, ...]
) -> None:
    tokenizer = tokenizers[name]
    answer = _encode(tokenizer, ANSWER)
    assert _spans_tokens(tokenizer, answer, stop)
    params = SamplingParams(len(answer), 0, stop=stop)
    got = streamed(tokenizer, answer, params)
    assert got == redecoded(tokenizer, answer, params)
    deltas, text, reason = got
    assert "".join(deltas) == text
    assert reason == ("length" if stop == ("never",) else "stop")


@pytest.mark.parametrize("name", ["bytes", "gpt2-bpe"])
def test_an_answer_cut_inside_a_character_ends_as_decoding_all_of_it_does(
    tokenizers: dict[str, Any], name: str
) -> None:
    tokenizer = tokenizers[name]
    answer = _encode(tokenizer, ANSWER)
    cut = next(n for n in range(1, len(answer)) if tokenizer.decode(answer[:n]).endswith("\ufffd"))
    params = SamplingParams(cut, 0)
    deltas, text, reason = streamed(tokenizer, answer, params)
    assert (deltas, text, reason) == redecoded(tokenizer, answer, params)
    assert text == tokenizer.decode(answer[:cut])
    assert "".join(deltas) == text
    assert text.endswith("\ufffd")


@pytest.mark.parametrize("name", ["metaspace", "wordpiece"])
def test_end_of_text_ends_the_answer_without_its_own_text(
    tokenizers: dict[str, Any], name: str
) -> None:
    tokenizer = tokenizers[name]
    words = _encode(tokenizer, "the grid waits")
    answer = [*words, tokenizer.eos_token_id, *words]
    params = SamplingParams(len(answer), 0)
    deltas, text, reason = streamed(tokenizer, answer, params)
    assert (deltas, text, reason) == redecoded(tokenizer, answer, params)
    assert (text, reason) == (tokenizer.decode(words), "stop")


@pytest.mark.parametrize(
    ("stop", "final"),
    [((), ANSWER), (("本語",), ANSWER[: ANSWER.find("本語")])],
    ids=["whole", "stopped"],
)
def test_a_byte_fallback_stream_sends_each_character_once(
    tokenizers: dict[str, Any], stop: tuple[str, ...], final: str
) -> None:
    # Decoding the whole answer at every token made a finished emoji followed by the
    # first byte of the next one read as U+FFFD again, and the stream sent it twice.
    tokenizer = tokenizers["byte-fallback"]
    answer = _encode(tokenizer, ANSWER)
    deltas, text, reason = streamed(tokenizer, answer, SamplingParams(len(answer), 0, stop=stop))
    assert "".join(deltas) == text == final
    assert reason == ("stop" if stop else "length")
