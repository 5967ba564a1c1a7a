"""The continuous-batching engine: its answers equal the model's own greedy generation."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from kilowatt.serve.errors import DeadlineUnmeetable, InvalidInput, RequestTimeout
from kilowatt.serve.generate.blocks import BlockManager
from kilowatt.serve.generate.engine import (
    EngineConfig,
    Finished,
    GenerationEngine,
    GenerationReport,
    TokenDelta,
)
from kilowatt.serve.generate.hfbuild import build_gpt2_folder
from kilowatt.serve.generate.lm import HFRunner, PagedRunner, StepInput, load_runner
from kilowatt.serve.generate.sampling import SamplingParams
from kilowatt.serve.generate.tinygpt import ByteTokenizer, TinyGPT, TinyGPTConfig

PROMPTS = [
    "The grid",
    "A language model answers one token at a time, and each step reads every weight.",
    "x",
    "Every request a server answers costs energy.",
]
LENGTHS = [20, 7, 30, 12]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny() -> TinyGPT:
    torch.manual_seed(0)
    return TinyGPT(TinyGPTConfig(context=128)).eval()


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_gpt2_folder(tmp_path_factory.mktemp("gpt2"), n_positions=128)


def paged_engine(model: TinyGPT, on_finish: Any = None, **config: int) -> GenerationEngine:
    settings = {"num_blocks": 64, "block_size": 8, "prefill_tokens_per_step": 16, **config}
    engine_config = EngineConfig(**settings)
    runner = PagedRunner(model, engine_config.num_blocks, engine_config.block_size, "tiny")
    engine = GenerationEngine(runner, engine_config, on_finish=on_finish)
    engine.start()
    return engine


def greedy(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0)


async def run_all(engine: GenerationEngine, prompts: list[str], lengths: list[int]) -> list:
    streams = [await engine.submit(p, greedy(n)) for p, n in zip(prompts, lengths, strict=True)]
    return list(await asyncio.gather(*(s.collect() for s in streams)))


def hf_reference(runner: HFRunner, prompt: str, n: int) -> list[int]:
    ids = torch.tensor([runner.tokenizer.encode(prompt)])
    out = runner.model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False
    )
    return out[0, ids.shape[1] :].tolist()


def test_mixed_batch_equals_step_by_step_greedy_on_the_paged_cache(tiny: TinyGPT) -> None:
    # Mixed prompt and answer lengths, a 16-token prefill budget (the long prompt is fed in
    # chunks beside the decoders) and sequences leaving at different steps.
    engine = paged_engine(tiny)
    try:
        results = asyncio.run(run_all(engine, PROMPTS, LENGTHS))
    finally:
        engine.close()
    tokenizer = ByteTokenizer()
    for prompt, n, result in zip(PROMPTS, LENGTHS, results, strict=True):
        assert list(result.token_ids) == tiny.greedy(tokenizer.encode(prompt), n)
        assert result.finish_reason == "length"
    assert engine.blocks.free_blocks == engine.blocks.num_blocks


def test_mixed_batch_equals_generate_for_a_transformers_model(gpt2_folder: Path) -> None:
    runner = load_runner(gpt2_folder, num_blocks=64, block_size=8)
    assert isinstance(runner, HFRunner)
    engine = GenerationEngine(
        runner, EngineConfig(num_blocks=64, block_size=8, prefill_tokens_per_step=8)
    )
    engine.start()
    try:
        results = asyncio.run(run_all(engine, PROMPTS, LENGTHS))
    finally:
        engine.close()
    for prompt, n, result in zip(PROMPTS, LENGTHS, results, strict=True):
        assert list(result.token_ids) == hf_reference(runner, prompt, n)


def test_transformers_slots_survive_joins_leaves_and_preemption(gpt2_folder: Path) -> None:
    # The engine is driven step by step (no scheduler thread), so what happens is fixed:
    # three requests run four steps, then two more arrive and 9 blocks of 8 slots cannot
    # hold all five, so the newest are preempted (their slots dropped and rebuilt by
    # recomputation); answers of different lengths leave at different steps (the last slot
    # moves into the hole). Every answer still equals model.generate.
    runner = load_runner(gpt2_folder, num_blocks=9, block_size=8)
    assert isinstance(runner, HFRunner)
    engine = GenerationEngine(
        runner, EngineConfig(num_blocks=9, block_size=8, prefill_tokens_per_step=8)
    )
    prompts, lengths = [*PROMPTS, "Power"], [*LENGTHS, 9]

    async def scenario() -> list[Finished]:
        early = [await engine.submit(prompts[i], greedy(lengths[i])) for i in range(3)]
        for _ in range(4):
            assert engine.run_step()
        assert engine.running == 3  # decoding when the others arrive
        late = [await engine.submit(prompts[i], greedy(lengths[i])) for i in range(3, 5)]
        while engine.run_step():
            pass
        return list(await asyncio.gather(*(s.collect() for s in [*early, *late])))

    results = asyncio.run(scenario())
    for prompt, n, result in zip(prompts, lengths, results, strict=True):
        assert list(result.token_ids) == hf_reference(runner, prompt, n)
    assert sum(r.report.preemptions for r in results) >= 1
    assert not runner._slots.ids  # every slot was given back
    assert engine.blocks.free_blocks == engine.blocks.num_blocks


def test_transformers_logits_match_a_full_pass_after_a_sequence_leaves(
    gpt2_folder: Path,
) -> None:
    # Random weights barely let context sway the argmax, so compare the logits themselves:
    # after the first sequence leaves (the last slot moves into its row) and a chunked
    # prompt continues, every decode step equals one uncached pass over the whole context.
    runner = load_runner(gpt2_folder, num_blocks=64, block_size=8)
    assert isinstance(runner, HFRunner)
    blocks = BlockManager(64, 8)
    context = {seq: runner.tokenizer.encode(p) for seq, p in zip("abc", PROMPTS, strict=False)}
    runner.step([StepInput(seq, ids, 0) for seq, ids in context.items()], blocks)
    runner.release("a")
    del context["a"]
    context["d"] = runner.tokenizer.encode(PROMPTS[3])
    runner.step([StepInput("d", context["d"][:4], 0)], blocks)
    runner.step([StepInput("d", context["d"][4:], 4)], blocks)
    for token in (5, 17, 40):
        work = [StepInput(seq, [token], len(ids)) for seq, ids in context.items()]
        logits = runner.step(work, blocks)
        for row, seq in enumerate(context):
            context[seq] = [*context[seq], token]
            with torch.inference_mode():
                full = runner.model(torch.tensor([context[seq]])).logits[0, -1]
            torch.testing.assert_close(logits[row], full, atol=1e-4, rtol=1e-4)


def test_a_request_joining_mid_batch_gets_the_tokens_it_gets_alone(tiny: TinyGPT) -> None:
    engine = paged_engine(tiny)

    async def scenario() -> tuple[Finished, Finished, Finished]:
        first = await engine.submit(PROMPTS[1], greedy(40))
        tokens = first.__aiter__()
        for _ in range(5):  # the first request is decoding when the second arrives
            await anext(tokens)
        second = await engine.submit(PROMPTS[3], greedy(12))
        joined = await second.collect()
        first_done = [item async for item in tokens][-1]
        alone = await (await engine.submit(PROMPTS[3], greedy(12))).collect()
        return joined, first_done, alone

    try:
        joined, first_done, alone = asyncio.run(scenario())
    finally:
        engine.close()
    assert joined.token_ids == alone.token_ids
    assert list(joined.token_ids) == tiny.greedy(ByteTokenizer().encode(PROMPTS[3]), 12)
    # the first request's answer is untouched by the newcomer
    assert isinstance(first_done, Finished)
    assert list(first_done.token_ids) == tiny.greedy(ByteTokenizer().encode(PROMPTS[1]), 40)


def test_kv_exhaustion_queues_and_preempts_instead_of_failing(tiny: TinyGPT) -> None:
    # 6 blocks of 8 slots; each request needs 5 blocks (5 prompt + 35 answer tokens), so the
    # second must wait or be preempted and recomputed, and every answer stays exact.
    engine = paged_engine(tiny, num_blocks=6)
    prompts = ["abcde", "fghij", "klmno"]
    try:
        results = asyncio.run(run_all(engine, prompts, [35, 35, 35]))
    finally:
        engine.close()
    tokenizer = ByteTokenizer()
    for prompt, result in zip(prompts, results, strict=True):
        assert list(result.token_ids) == tiny.greedy(tokenizer.encode(prompt), 35)
    assert sum(r.report.preemptions for r in results) >= 1
    assert engine.blocks.free_blocks == 6


def test_a_client_leaving_mid_stream_frees_its_blocks(tiny: TinyGPT) -> None:
    reports: list[GenerationReport] = []
    engine = paged_engine(tiny, on_finish=reports.append)

    async def leave_early() -> int:
        stream = await engine.submit(PROMPTS[1], greedy(40))
        iterator = stream.__aiter__()
        await anext(iterator)
        await anext(iterator)
        held = len(engine.blocks.table(stream.seq_id))
        await iterator.aclose()  # what a cancelled HTTP response does
        deadline = time.monotonic() + 30
        while not reports and time.monotonic() < deadline:  # the loop stays alive meanwhile
            await asyncio.sleep(0.01)
        return held

    try:
        held = asyncio.run(leave_early())
    finally:
        engine.close()
    assert held > 0
    assert engine.blocks.free_blocks == engine.blocks.num_blocks
    assert engine.running == 0
    assert [r.finish_reason for r in reports] == ["abort"]
    assert reports[0].completion_tokens < 40


def test_stop_sequence_ends_the_answer_before_it(tiny: TinyGPT) -> None:
    tokenizer = ByteTokenizer()
    full = tokenizer.decode(tiny.greedy(tokenizer.encode(PROMPTS[0]), 30))
    stop = full[10:13]
    engine = paged_engine(tiny)

    async def stream_text() -> tuple[str, Finished]:
        text = ""
        stream = await engine.submit(PROMPTS[0], SamplingParams(30, 0, stop=(stop,)))
        async for item in stream:
            if isinstance(item, Finished):
                return text, item
            text += item.text
        raise AssertionError("no Finished")

    try:
        streamed, finished = asyncio.run(stream_text())
    finally:
        engine.close()
    assert finished.text == full[: full.find(stop)]
    assert streamed == finished.text
    assert finished.finish_reason == "stop"


def test_seeded_sampling_repeats_and_another_seed_differs(tiny: TinyGPT) -> None:
    engine = paged_engine(tiny)
    try:
        answers = [
            engine.generate(PROMPTS[0], SamplingParams(30, 2.0, 0.95, seed=seed)).token_ids
            for seed in (7, 7, 8)
        ]
    finally:
        engine.close()
    assert answers[0] == answers[1]
    assert answers[0] != answers[2]


def test_a_prompt_longer_than_the_context_is_refused(tiny: TinyGPT) -> None:
    engine = paged_engine(tiny)
    try:
        with pytest.raises(InvalidInput, match="context of 128 tokens"):
            engine.generate("y" * 120, greedy(16))
        with pytest.raises(DeadlineUnmeetable, match="deadline"):
            asyncio.run(engine.submit("hi", greedy(4), deadline_s=time.monotonic() - 1))
    finally:
        engine.close()
    assert engine.blocks.free_blocks == engine.blocks.num_blocks


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def test_a_deadline_stops_a_generation_under_way_and_frees_its_blocks(tiny: TinyGPT) -> None:
    clock = FakeClock()
    reports: list[GenerationReport] = []
    config = EngineConfig(num_blocks=64, block_size=8, prefill_tokens_per_step=16)
    runner = PagedRunner(tiny, config.num_blocks, config.block_size, "tiny")
    engine = GenerationEngine(runner, config, on_finish=reports.append, clock=clock)

    async def scenario() -> tuple[list[Any], BaseException | None]:
        stream = await engine.submit(PROMPTS[0], greedy(100), deadline_s=10.0)
        other = await engine.submit(PROMPTS[2], greedy(6), deadline_s=None)
        for _ in range(4):  # the prompt, then three decode steps: four tokens
            engine.run_step()
        clock.now_s = 10.5  # the deadline passes mid-generation
        while engine.run_step():  # the request without a deadline runs to its end
            pass
        assert (await other.collect()).finish_reason == "length"
        got: list[Any] = []
        try:
            async for item in stream:
                got.append(item)
        except RequestTimeout as exc:
            return got, exc
        return got, None

    got, error = asyncio.run(scenario())
    assert isinstance(error, RequestTimeout)
    assert "passed its deadline after 4 of 100 tokens" in str(error)
    assert [type(item) for item in got] == [TokenDelta] * 4  # the tokens before it, no Finished
    timed_out = reports[0]
    assert (timed_out.finish_reason, timed_out.completion_tokens) == ("timeout", 4)
    assert [r.finish_reason for r in reports[1:]] == ["length"]
    assert engine.blocks.free_blocks == engine.blocks.num_blocks


def test_a_deadline_that_passes_in_the_queue_stops_the_request_before_it_starts(
    tiny: TinyGPT,
) -> None:
    clock = FakeClock()
    engine = GenerationEngine(
        PagedRunner(tiny, 64, 8, "tiny"), EngineConfig(num_blocks=64, block_size=8), clock=clock
    )

    async def scenario() -> None:
        stream = await engine.submit(PROMPTS[0], greedy(5), deadline_s=1.0)
        clock.now_s = 2.0
        assert engine.run_step()
        with pytest.raises(RequestTimeout, match="before it started"):
            await stream.collect()

    asyncio.run(scenario())
    assert engine.steps == 0  # nothing reached the model
    assert engine.blocks.free_blocks == engine.blocks.num_blocks
