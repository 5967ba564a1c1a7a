"""LLM serving with continuous batching and a paged KV cache, by a small event simulation.

The engine runs iterations (as vLLM and TGI do): each iteration decodes one token for every
running sequence and prefills the prompts admitted at its start. An iteration takes the
longer of reading the weights and the running sequences' KV cache from memory and doing its
arithmetic, plus a fixed scheduler and kernel-launch overhead. KV memory is the batch limit:
it is handed out in blocks of ``block_tokens``; a prompt is admitted only when its blocks
are free, and when a running sequence needs a block that is not there the newest sequence
is preempted and recomputed later (vLLM's recompute preemption).

Requests arrive as given (``poisson_arrivals`` draws Poisson arrivals); the result has time
to first token, time per output token and inter-token latency percentiles, and throughput.

>>> from kilowatt.spec.plan import PlanModel
>>> m = PlanModel(params=7.25e9, layers=32, hidden=4096, heads=32, kv_heads=8, seq_len=4096)
>>> engine = Engine.for_model(m, memory_bytes=80 * 2**30, bandwidth_bytes_per_s=3.35e12,
...                           flops_per_s=989e12 * 0.5)
>>> result = simulate(engine, [Request(0.0, 100, 50)])
>>> round(result.tpot_s.p50 * 1e3, 1)  # 14.5 GB / 2.68 TB/s + 2.5 ms overhead
7.9
"""

from __future__ import annotations

import math
import random
import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from kilowatt.catalog import Accelerator
from kilowatt.errors import PlanInfeasible
from kilowatt.plan.compute import forward_flops_per_token
from kilowatt.plan.inference import BANDWIDTH_EFFICIENCY, kv_cache_precision, weight_bytes
from kilowatt.plan.memory import MEMORY_USABLE_FRACTION, kv_cache_bytes_per_token
from kilowatt.spec.plan import PlanModel

__all__ = [
    "BLOCK_TOKENS",
    "STEP_OVERHEAD_S",
    "Engine",
    "Percentiles",
    "Request",
    "SimulationResult",
    "describe",
    "poisson_arrivals",
    "simulate",
    "simulate_replica",
]

BLOCK_TOKENS = 16
# Scheduling, sampling and kernel launches per iteration, on top of GPU time: a few ms for
# vLLM 0.5-0.6 (its 2024-09-05 performance post finds CPU work dominating small-model
# steps on H100). 2.5 ms matches the single-GPU checks in BENCHMARKS.md.
STEP_OVERHEAD_S = 2.5e-3


@dataclass(frozen=True)
class Request:
    """One request: when it arrives and its prompt and output lengths in tokens."""

    arrival_s: float
    prompt_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class Engine:
    """One serving replica: what an iteration costs and how much KV cache it holds.

    ``speed_factor`` scales iteration time: measured over predicted time per token for
    this model and accelerator (calibration from measured serving), 1.0 without one.
    ``prefill_flops_per_s`` is the rate prompts are prefilled at when it was measured apart
    from decoding (a serving calibration's prefill rate); ``flops_per_s`` without one.
    """

    weight_bytes: float
    kv_bytes_per_token: float
    flops_per_token: float
    attention_flops_per_context_token: float
    flops_per_s: float
    bytes_per_s: float
    kv_capacity_tokens: int
    max_batched_tokens: int = 8192
    max_sequences: int = 256
    block_tokens: int = BLOCK_TOKENS
    step_overhead_s: float = STEP_OVERHEAD_S
    speed_factor: float = 1.0
    prefill_flops_per_s: float | None = None

    @classmethod
    def for_model(
        cls,
        model: PlanModel,
        *,
        memory_bytes: float,
        bandwidth_bytes_per_s: float,
        flops_per_s: float,
        precision: str = "bf16",
        speed_factor: float = 1.0,
        prefill_flops_per_s: float | None = None,
        **options: int | float,
    ) -> Engine:
        """An engine for ``model`` on accelerators with this much memory, bandwidth and
        achieved FLOP/s together (a tensor-parallel replica sums its devices); prefill at
        ``prefill_flops_per_s`` when that was measured, else at ``flops_per_s``."""
        weights = weight_bytes(model, precision)
        kv_per_token = kv_cache_bytes_per_token(model, kv_cache_precision(precision))
        free = memory_bytes * MEMORY_USABLE_FRACTION - weights
        if free <= 0:
            raise PlanInfeasible(
                f"weights ({weights / 2**30:.1f} GiB) leave no room for a KV cache in "
                f"{memory_bytes * MEMORY_USABLE_FRACTION / 2**30:.1f} GiB usable"
            )
        assert model.layers and model.hidden
        return cls(
            weight_bytes=weights,
            kv_bytes_per_token=kv_per_token,
            flops_per_token=forward_flops_per_token(model, 0),
            attention_flops_per_context_token=2.0 * model.layers * model.hidden,
            flops_per_s=flops_per_s,
            bytes_per_s=bandwidth_bytes_per_s * BANDWIDTH_EFFICIENCY,
            kv_capacity_tokens=int(free // kv_per_token),
            speed_factor=speed_factor,
            prefill_flops_per_s=prefill_flops_per_s,
            **options,  # type: ignore[arg-type]
        )

    @property
    def kv_blocks(self) -> int:
        return self.kv_capacity_tokens // self.block_tokens

    @property
    def prefill_rate_flops_per_s(self) -> float:
        """FLOP/s of prefill: the measured prefill rate, or the engine's compute rate."""
        return self.prefill_flops_per_s or self.flops_per_s

    def prefill_compute_s(self, prompt_tokens: float, attended: float) -> float:
        """Arithmetic of prefilling ``prompt_tokens`` attending over ``attended`` positions."""
        flops = (
            prompt_tokens * self.flops_per_token + attended * self.attention_flops_per_context_token
        )
        return flops / self.prefill_rate_flops_per_s

    def iteration_s(
        self,
        decode_context_tokens: int,
        decode_tokens: int,
        decode_attended: float,
        prefill_tokens: int = 0,
        prefill_attended: float = 0.0,
    ) -> float:
        """One iteration: read weights and the decoded sequences' KV cache, compute
        ``decode_tokens`` decode tokens attending over ``decode_attended`` positions and
        prefill ``prefill_tokens`` prompt tokens attending over ``prefill_attended``."""
        memory_s = (self.weight_bytes + decode_context_tokens * self.kv_bytes_per_token) / (
            self.bytes_per_s
        )
        decode_flops = (
            decode_tokens * self.flops_per_token
            + decode_attended * self.attention_flops_per_context_token
        )
        compute_s = decode_flops / self.flops_per_s + self.prefill_compute_s(
            prefill_tokens, prefill_attended
        )
        return (max(memory_s, compute_s) + self.step_overhead_s) * self.speed_factor


@dataclass(frozen=True)
class Percentiles:
    """p50, p90 and p99 of a latency in seconds."""

    p50: float
    p90: float
    p99: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Percentiles:
        if not values:
            return cls(math.nan, math.nan, math.nan)
        if len(values) == 1:
            return cls(values[0], values[0], values[0])
        cuts = statistics.quantiles(values, n=100, method="inclusive")
        return cls(statistics.median(values), cuts[89], cuts[98])


@dataclass(frozen=True)
class SimulationResult:
    """What clients of the replica would measure."""

    ttft_s: Percentiles
    tpot_s: Percentiles
    """Per request: (finish - first token) / (output tokens - 1)."""
    itl_s: Percentiles
    output_tokens_per_s: float
    requests_per_s: float
    makespan_s: float
    preemptions: int
    peak_batch: int


@dataclass(eq=False)  # sequences are compared by identity: equal requests are distinct
class _Sequence:
    request: Request
    generated: int = 0
    blocks: int = 0
    first_token_s: float | None = None
    last_token_s: float = 0.0
    gaps: list[float] = field(default_factory=list)

    @property
    def context(self) -> int:
        return self.request.prompt_tokens + self.generated

    @property
    def wanted(self) -> int:
        return max(1, self.request.output_tokens)


def poisson_arrivals(
    rate_per_s: float, count: int, prompt_tokens: int, output_tokens: int, seed: int = 0
) -> list[Request]:
    """``count`` requests with exponential gaps of mean ``1/rate_per_s`` (seeded)."""
    draw = random.Random(seed)
    now, requests = 0.0, []
    for _ in range(count):
        now += draw.expovariate(rate_per_s)
        requests.append(Request(now, prompt_tokens, output_tokens))
    return requests


def simulate(engine: Engine, requests: Sequence[Request]) -> SimulationResult:
    """Run ``requests`` through ``engine`` iteration by iteration."""
    pending = deque(sorted(requests, key=lambda r: r.arrival_s))
    waiting: deque[_Sequence] = deque()
    running: list[_Sequence] = []
    done: list[_Sequence] = []
    free_blocks, now, preemptions, peak = engine.kv_blocks, 0.0, 0, 0
    _check_fits(engine, requests)
    while pending or waiting or running:
        while pending and pending[0].arrival_s <= now:
            waiting.append(_Sequence(pending.popleft()))
        if not waiting and not running:
            now = pending[0].arrival_s
            continue
        admitted, free_blocks = _admit(engine, waiting, running, free_blocks)
        joined = set(admitted)
        decoding = [s for s in running if s not in joined]
        free_blocks, evicted = _grow(engine, decoding, running, waiting, free_blocks)
        preemptions += len(evicted)
        decoding = [s for s in decoding if s not in evicted]
        peak = max(peak, len(running))
        decode_context = sum(s.context for s in decoding)
        now += engine.iteration_s(
            decode_context,
            len(decoding),
            decode_context,
            sum(s.context for s in admitted),
            sum(s.context**2 / 2 for s in admitted),
        )
        for seq in [*admitted, *decoding]:
            _emit_token(seq, now)
        for seq in [s for s in running if s.generated >= s.wanted]:
            running.remove(seq)
            free_blocks += seq.blocks
            done.append(seq)
    return _result(done, preemptions, peak)


def _check_fits(engine: Engine, requests: Sequence[Request]) -> None:
    longest = max((r.prompt_tokens + max(1, r.output_tokens) for r in requests), default=0)
    if math.ceil(longest / engine.block_tokens) > engine.kv_blocks:
        raise PlanInfeasible(
            f"a request of {longest} tokens needs more KV cache than the replica holds "
            f"({engine.kv_capacity_tokens} tokens); use more accelerators per replica"
        )


def _admit(
    engine: Engine, waiting: deque[_Sequence], running: list[_Sequence], free_blocks: int
) -> tuple[list[_Sequence], int]:
    """Prompts admitted this iteration, first come first served, while their KV blocks,
    the token budget and the sequence limit allow."""
    admitted: list[_Sequence] = []
    budget = engine.max_batched_tokens
    while waiting and len(running) < engine.max_sequences:
        seq = waiting[0]
        need = math.ceil((seq.context + 1) / engine.block_tokens)
        if need > free_blocks or (admitted and seq.context > budget):
            break
        waiting.popleft()
        seq.blocks, free_blocks = need, free_blocks - need
        budget -= seq.context
        admitted.append(seq)
        running.append(seq)
    return admitted, free_blocks


def _grow(
    engine: Engine,
    decoding: list[_Sequence],
    running: list[_Sequence],
    waiting: deque[_Sequence],
    free_blocks: int,
) -> tuple[int, set[_Sequence]]:
    """Give each decoding sequence the block its next token needs, preempting the newest
    sequences (back to the head of the queue, to be recomputed) when none is free.
    Returns the free blocks left and the preempted sequences."""
    evicted: set[_Sequence] = set()
    for seq in decoding:
        if seq in evicted:
            continue
        while math.ceil((seq.context + 1) / engine.block_tokens) > seq.blocks:
            if free_blocks > 0:
                seq.blocks, free_blocks = seq.blocks + 1, free_blocks - 1
                continue
            victim = running.pop()
            free_blocks += victim.blocks
            victim.blocks = 0
            waiting.appendleft(victim)
            evicted.add(victim)
            if victim is seq:
                break
    return free_blocks, evicted


def _emit_token(seq: _Sequence, now: float) -> None:
    if seq.first_token_s is None:
        seq.first_token_s = now
    else:
        seq.gaps.append(now - seq.last_token_s)
    seq.last_token_s = now
    seq.generated += 1


def _result(done: list[_Sequence], preemptions: int, peak: int) -> SimulationResult:
    first = min(s.request.arrival_s for s in done)
    makespan = max(s.last_token_s for s in done) - first
    tpot = [
        (s.last_token_s - s.first_token_s) / (s.generated - 1)
        for s in done
        if s.first_token_s is not None and s.generated > 1
    ]
    tokens = sum(s.generated for s in done)
    return SimulationResult(
        ttft_s=Percentiles.of(
            [s.first_token_s - s.request.arrival_s for s in done if s.first_token_s is not None]
        ),
        tpot_s=Percentiles.of(tpot),
        itl_s=Percentiles.of([gap for s in done for gap in s.gaps]),
        output_tokens_per_s=tokens / makespan if makespan > 0 else math.inf,
        requests_per_s=len(done) / makespan if makespan > 0 else math.inf,
        makespan_s=makespan,
        preemptions=preemptions,
        peak_batch=peak,
    )


def simulate_replica(
    model: PlanModel,
    accelerator: Accelerator,
    accelerators: int,
    *,
    requests_per_s: float,
    prompt_tokens: int,
    output_tokens: int,
    precision: str = "bf16",
    mfu: float | None = None,
    prefill_mfu: float | None = None,
    max_sequences: int = 256,
    speed_factor: float = 1.0,
    count: int = 300,
    seed: int = 0,
) -> SimulationResult:
    """One replica of ``accelerators`` x ``accelerator`` under ``count`` Poisson arrivals.

    ``mfu`` (compute efficiency) defaults to the accelerator's catalog figure; pass the
    calibration's measured one where there is one, and its measured ``prefill_mfu``."""
    efficiency = mfu if mfu is not None else accelerator.default_mfu(precision)
    peak = accelerators * accelerator.peak_flops(precision)
    engine = Engine.for_model(
        model,
        memory_bytes=accelerators * accelerator.memory_bytes,
        bandwidth_bytes_per_s=accelerators * accelerator.memory_bandwidth_bytes_per_s,
        flops_per_s=peak * efficiency,
        precision=precision,
        speed_factor=speed_factor,
        prefill_flops_per_s=peak * prefill_mfu if prefill_mfu else None,
        max_sequences=max_sequences,
    )
    arrivals = poisson_arrivals(requests_per_s, count, prompt_tokens, output_tokens, seed)
    return simulate(engine, arrivals)


def describe(result: SimulationResult, requests_per_s: float) -> str:
    """One line for a serving plan's explanation."""
    return (
        f"Continuous batching (event simulation, Poisson arrivals at {requests_per_s:.2f} "
        f"req/s per replica, paged KV cache): time to first token p50 "
        f"{result.ttft_s.p50 * 1e3:,.0f} ms / p99 {result.ttft_s.p99 * 1e3:,.0f} ms; "
        f"inter-token p50 {result.itl_s.p50 * 1e3:.1f} ms / p99 {result.itl_s.p99 * 1e3:.1f} ms; "
        f"{result.output_tokens_per_s:,.0f} output tokens/s; peak batch {result.peak_batch}"
        + (f", {result.preemptions} preemptions" if result.preemptions else "")
        + "."
    )
