"""The generative load scenario: Poisson arrivals of completions with drawn prompt and output
lengths, against any OpenAI-compatible ``/v1/completions`` endpoint.

Open loop: each request is sent at its scheduled time whether or not earlier ones have
answered, and its time to first token counts from that time. With ``stream`` the first token
is the first server-sent chunk carrying text and the gaps between text chunks are the
inter-token latencies; without it the first token arrives with the whole answer.

>>> spec = GenerativeLoadSpec(url="http://127.0.0.1:8000", model="tiny", qps=4, requests=40)
>>> result = run_generative_load(spec)  # doctest: +SKIP
>>> result.output_tokens_per_s  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from kilowatt.errors import SpecError

__all__ = ["GenerativeLoadResult", "GenerativeLoadSpec", "draw_requests", "run_generative_load"]


@dataclass(frozen=True)
class GenerativeLoadSpec:
    """What to send, how often and how long the answers are.

    Attributes:
        url: server base URL (``http://host:port``); requests go to ``/v1/completions``.
        model: the model id to ask for.
        qps: mean arrival rate (Poisson).
        requests: how many requests the run sends.
        prompt_words: inclusive range of prompt lengths, in words of the shipped corpus.
        output_tokens: inclusive range of ``max_tokens`` (drawn uniformly).
        stream: ask for server-sent events.
        seed: seed of arrivals, prompts and lengths.
        timeout_s: longest one request may take.
    """

    url: str
    model: str
    qps: float = 4.0
    requests: int = 40
    prompt_words: tuple[int, int] = (8, 64)
    output_tokens: tuple[int, int] = (16, 128)
    stream: bool = True
    seed: int = 0
    timeout_s: float = 300.0

    def __post_init__(self) -> None:
        if self.qps <= 0 or self.requests < 1:
            raise SpecError(f"qps must be > 0 and requests >= 1, got {self.qps}, {self.requests}")
        for name in ("prompt_words", "output_tokens"):
            low, high = getattr(self, name)
            if not 1 <= low <= high:
                raise SpecError(f"{name} must be a range 1 <= low <= high, got ({low}, {high})")


@dataclass(frozen=True)
class _Planned:
    at_s: float
    prompt: str
    max_tokens: int


@dataclass
class _Outcome:
    ok: bool = False
    ttft_s: float | None = None
    gaps_s: tuple[float, ...] = ()
    completion_tokens: int = 0
    done_s: float = 0.0
    error: str = ""


@dataclass(frozen=True)
class GenerativeLoadResult:
    """Latency and throughput of one run (seconds; tokens per second)."""

    requests: int
    ok: int
    failed: int
    duration_s: float
    output_tokens: int
    output_tokens_per_s: float
    ttft_p50_s: float | None
    ttft_p99_s: float | None
    inter_token_p50_s: float | None
    inter_token_p99_s: float | None
    errors: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def draw_requests(spec: GenerativeLoadSpec, corpus: str) -> list[_Planned]:
    """The run's schedule: Poisson arrival times, prompts cut from ``corpus``, lengths."""
    rng = np.random.default_rng(spec.seed)
    words = corpus.split()
    arrivals = np.cumsum(rng.exponential(1.0 / spec.qps, spec.requests))
    planned = []
    for at_s in arrivals:
        size = int(rng.integers(spec.prompt_words[0], spec.prompt_words[1] + 1))
        start = int(rng.integers(0, max(len(words) - size, 1)))
        tokens = int(rng.integers(spec.output_tokens[0], spec.output_tokens[1] + 1))
        planned.append(_Planned(float(at_s), " ".join(words[start : start + size]), tokens))
    return planned


def run_generative_load(
    spec: GenerativeLoadSpec, corpus: str | None = None
) -> GenerativeLoadResult:
    """Send the drawn requests on their schedule and summarise what came back."""
    if corpus is None:
        from kilowatt.serve.generate.tinygpt import shipped_corpus

        corpus = shipped_corpus()
    return asyncio.run(_run(spec, draw_requests(spec, corpus)))


async def _run(spec: GenerativeLoadSpec, planned: list[_Planned]) -> GenerativeLoadResult:
    import httpx

    limits = httpx.Limits(max_connections=len(planned), max_keepalive_connections=len(planned))
    timeout = httpx.Timeout(spec.timeout_s)
    async with httpx.AsyncClient(base_url=spec.url, limits=limits, timeout=timeout) as client:
        started = time.monotonic()
        tasks = [asyncio.create_task(_one(client, spec, p, started)) for p in planned]
        outcomes = await asyncio.gather(*tasks)
    return _summarise(outcomes, started)


async def _one(client: Any, spec: GenerativeLoadSpec, plan: _Planned, t0: float) -> _Outcome:
    await asyncio.sleep(max(0.0, t0 + plan.at_s - time.monotonic()))
    sent = t0 + plan.at_s  # open loop: latency counts from the scheduled time
    body = {"model": spec.model, "prompt": plan.prompt, "max_tokens": plan.max_tokens,
            "temperature": 0, "stream": spec.stream}  # fmt: skip
    outcome = _Outcome()
    try:
        if spec.stream:
            await _streamed(client, body, sent, outcome)
        else:
            reply = await client.post("/v1/completions", json=body)
            reply.raise_for_status()
            outcome.ttft_s = time.monotonic() - sent
            outcome.completion_tokens = int(reply.json()["usage"]["completion_tokens"])
        outcome.ok = True
    except Exception as exc:  # a failed request is counted, never fatal to the run
        outcome.error = f"{type(exc).__name__}: {exc}"[:200]
    outcome.done_s = time.monotonic()
    return outcome


async def _streamed(client: Any, body: dict[str, Any], sent: float, outcome: _Outcome) -> None:
    times: list[float] = []
    async with client.stream("POST", "/v1/completions", json=body) as reply:
        reply.raise_for_status()
        async for line in reply.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            doc = json.loads(line[6:])
            if doc.get("error"):  # the server ended the stream with an error event
                raise RuntimeError(doc["error"].get("message", "error event"))
            if doc.get("usage"):
                outcome.completion_tokens = int(doc["usage"]["completion_tokens"])
            if doc["choices"] and doc["choices"][0].get("text"):
                times.append(time.monotonic())
    if times:
        outcome.ttft_s = times[0] - sent
        outcome.gaps_s = tuple(np.diff(times).tolist())


def _summarise(outcomes: list[_Outcome], started: float) -> GenerativeLoadResult:
    good = [o for o in outcomes if o.ok]
    end = max((o.done_s for o in outcomes), default=started)
    duration_s = max(end - started, 1e-9)
    tokens = sum(o.completion_tokens for o in good)
    ttfts = [o.ttft_s for o in good if o.ttft_s is not None]
    gaps = [g for o in good for g in o.gaps_s]
    return GenerativeLoadResult(
        requests=len(outcomes),
        ok=len(good),
        failed=len(outcomes) - len(good),
        duration_s=duration_s,
        output_tokens=tokens,
        output_tokens_per_s=tokens / duration_s,
        ttft_p50_s=_quantile(ttfts, 0.5),
        ttft_p99_s=_quantile(ttfts, 0.99),
        inter_token_p50_s=_quantile(gaps, 0.5),
        inter_token_p99_s=_quantile(gaps, 0.99),
        errors=tuple(sorted({o.error for o in outcomes if o.error}))[:5],
    )


def _quantile(values: list[float], q: float) -> float | None:
    return float(np.quantile(values, q)) if values else None
