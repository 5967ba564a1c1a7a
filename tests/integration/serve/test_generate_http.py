"""The OpenAI-compatible generation server, driven by the official ``openai`` client."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest
import torch
import uvicorn
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from kilowatt.meter import CounterReader, EnergyMeter
from kilowatt.serve.generate import (
    EngineConfig,
    GenerateMetrics,
    GenerationEngine,
    build_generate_app,
)
from kilowatt.serve.generate.lm import load_runner
from kilowatt.serve.generate.openai_routes import create_generate_app
from kilowatt.serve.generate.tinygpt import ByteTokenizer, TinyGPT, TinyGPTConfig, save_tiny_gpt

JOULES_PER_STEP = 0.5


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return save_tiny_gpt(TinyGPT(TinyGPTConfig(context=128)), tmp_path_factory.mktemp("tiny"))


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """``app`` on 127.0.0.1:<free port>; yields its URL."""
    web = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=web.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not web.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{web.servers[0].sockets[0].getsockname()[1]}"
    finally:
        web.should_exit = True
        thread.join(30)


@pytest.fixture
def server(model_dir: Path) -> Iterator[tuple[str, GenerationEngine]]:
    """The app, with a meter that counts 0.5 J per engine step."""
    counter = itertools.count(0.0, JOULES_PER_STEP)  # read once at the start and end of a step
    meter = EnergyMeter([CounterReader(lambda: next(counter))])
    metrics = GenerateMetrics(CollectorRegistry())
    config = EngineConfig(num_blocks=64, block_size=8)
    app, engine = build_generate_app(model_dir, config=config, name="tiny", meter=meter,
                                     metrics=metrics)  # fmt: skip
    try:
        with serving(app) as url:
            yield url, engine
    finally:
        engine.close()


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def test_the_openai_client_streams_a_chat_completion(
    server: tuple[str, GenerationEngine], model_dir: Path
) -> None:
    url, _ = server
    messages = [{"role": "user", "content": "How much is a kilowatt hour?"}]
    ask = {"model": "tiny", "messages": messages, "max_tokens": 12, "temperature": 0}
    chunks = list(client(url).chat.completions.create(**ask, stream=True))
    whole = client(url).chat.completions.create(**ask)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    prompt = "user: How much is a kilowatt hour?\nassistant:"
    tokenizer = ByteTokenizer()
    model = TinyGPT(TinyGPTConfig(context=128))
    model.load_state_dict(torch.load(model_dir / "model.pt", weights_only=True))
    expected = tokenizer.decode(model.eval().greedy(tokenizer.encode(prompt), 12))
    assert streamed == whole.choices[0].message.content == expected
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason == "length"
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens == 12
    assert whole.usage.prompt_tokens == len(prompt.encode())


def test_completion_streamed_and_whole_agree_and_report_joules_per_token(
    server: tuple[str, GenerationEngine],
) -> None:
    url, _ = server
    ask = {"model": "tiny", "prompt": "The grid", "max_tokens": 20, "temperature": 0}
    chunks = list(client(url).completions.create(**ask, stream=True))
    whole = client(url).completions.create(**ask)
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert whole.usage.total_tokens == 8 + 20
    measured = whole.model_extra["kilowatt"]
    # alone, each step is this request's: one token per step, 0.5 J per step
    assert measured["energy_per_output_token_j"] == pytest.approx(JOULES_PER_STEP)
    assert measured["energy_method"] == "measured-nvml"
    assert measured["time_to_first_token_s"] > 0
    scrape = httpx.get(f"{url}/metrics").text
    samples = {
        (s.name, s.labels.get("model")): s.value
        for family in text_string_to_metric_families(scrape)
        for s in family.samples
    }
    assert samples[("kilowatt_generate_time_to_first_token_seconds_count", "tiny")] == 2
    assert samples[("kilowatt_generate_inter_token_latency_seconds_count", "tiny")] == 2 * 19
    assert samples[("kilowatt_generate_output_tokens_total", "tiny")] == 40


def test_models_lists_the_served_model(server: tuple[str, GenerationEngine]) -> None:
    url, _ = server
    assert [m.id for m in client(url).models.list()] == ["tiny"]


def test_bad_requests_get_clear_errors(server: tuple[str, GenerationEngine]) -> None:
    url, engine = server
    with pytest.raises(openai.NotFoundError, match="'gpt-4' is not served here"):
        client(url).completions.create(model="gpt-4", prompt="hi")
    with pytest.raises(openai.BadRequestError, match="context of 128 tokens"):
        client(url).completions.create(model="tiny", prompt="y" * 200)
    reply = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": "tiny", "messages": [{"role": "robot", "content": "beep"}]},
    )
    assert reply.status_code == 400
    assert "messages.0.role" in reply.json()["error"]["message"]
    assert engine.blocks.free_blocks == engine.blocks.num_blocks


def test_a_client_that_disconnects_mid_stream_frees_its_blocks(
    server: tuple[str, GenerationEngine],
) -> None:
    url, engine = server
    body = {"model": "tiny", "prompt": "The grid", "max_tokens": 100, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body) as reply:
        lines = reply.iter_lines()
        assert next(lines).startswith("data: ")
        assert engine.blocks.used_blocks > 0
    deadline = time.monotonic() + 30
    while engine.blocks.used_blocks and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.blocks.free_blocks == engine.blocks.num_blocks
    assert engine.running == 0
    scrape = httpx.get(f"{url}/metrics").text
    reasons = {
        s.labels["finish_reason"]: s.value
        for family in text_string_to_metric_families(scrape)
        for s in family.samples
        if s.name == "kilowatt_generate_requests_total"
    }
    assert reasons == {"abort": 1.0}  # ended by the disconnect, not by running to the end


def test_generative_load_reports_tokens_and_latency_quantiles(
    server: tuple[str, GenerationEngine],
) -> None:
    from kilowatt.bench.genload import GenerativeLoadSpec, draw_requests, run_generative_load
    from kilowatt.serve.generate.tinygpt import shipped_corpus

    spec = GenerativeLoadSpec(url=server[0], model="tiny", qps=50, requests=6,
                              prompt_words=(2, 6), output_tokens=(4, 9))  # fmt: skip
    result = run_generative_load(spec)
    asked = sum(p.max_tokens for p in draw_requests(spec, shipped_corpus()))
    assert (result.ok, result.failed) == (6, 0)
    assert result.output_tokens == asked
    assert result.output_tokens_per_s == pytest.approx(asked / result.duration_s)
    assert 0 < result.ttft_p50_s <= result.ttft_p99_s
    assert result.inter_token_p50_s is not None


class FedTokensClock:
    """Engine time that stands still until the engine has fed ``jump_at`` tokens, then
    jumps 1000 s: a deadline passes at a known token, whatever the machine's speed."""

    def __init__(self) -> None:
        self.engine: GenerationEngine | None = None
        self.base_s = 0.0
        self.jump_at = 0

    def __call__(self) -> float:
        assert self.engine is not None
        return self.base_s + (1000.0 if self.engine.tokens_fed >= self.jump_at else 0.0)

    def jump_after(self, tokens: int) -> None:
        assert self.engine is not None
        self.base_s += 2000.0
        self.jump_at = self.engine.tokens_fed + tokens


def test_a_deadline_bounds_the_whole_generation(model_dir: Path) -> None:
    clock = FedTokensClock()
    metrics = GenerateMetrics(CollectorRegistry())
    config = EngineConfig(num_blocks=64, block_size=8)
    runner = load_runner(model_dir, num_blocks=64, block_size=8, name="tiny")
    engine = GenerationEngine(runner, config, on_finish=metrics.observer("tiny"), clock=clock)
    clock.engine = engine
    engine.start()
    ask = {"model": "tiny", "prompt": "The grid", "max_tokens": 100, "temperature": 0,
           "extra_headers": {"kilowatt-deadline-ms": "60000"}}  # fmt: skip
    try:
        with serving(create_generate_app(engine, metrics)) as url:
            clock.jump_after(8 + 3)  # the 8-token prompt and three decode steps: 4 tokens
            texts = []
            with pytest.raises(openai.APIError, match="passed its deadline after 4 of 100"):
                for chunk in client(url).completions.create(**ask, stream=True):
                    texts.append(chunk.choices[0].text)
            clock.jump_after(8 + 3)
            with pytest.raises(openai.APIStatusError, match="deadline after 4 of 100") as whole:
                client(url).completions.create(**ask)
            scrape = httpx.get(f"{url}/metrics").text
    finally:
        engine.close()
    assert whole.value.status_code == 504
    assert "".join(texts)  # the stream sent the text made before the deadline
    assert engine.blocks.free_blocks == engine.blocks.num_blocks
    reasons = {
        s.labels["finish_reason"]: s.value
        for family in text_string_to_metric_families(scrape)
        for s in family.samples
        if s.name == "kilowatt_generate_requests_total"
    }
    assert reasons == {"timeout": 2.0}
