"""Continuous batching in steady state: a closed-form estimate of the event simulation.

The search ranks every configuration with this estimate and runs the event simulation
(``kilowatt.plan.llm_serving``) only on the plans it shows. Same phase model as the
simulation, averaged over a long run of Poisson arrivals at ``λ`` requests/s:

- a running sequence holds on average ``P + O/2`` tokens of KV cache, so the replica runs at
  most ``slots = min(max_sequences, KV blocks / blocks per sequence)`` sequences at once;
- an iteration with ``n`` running sequences reads the weights and their KV cache and
  computes their decode tokens; one that also prefills the prompts that arrived during the
  previous one takes longer, and every running sequence waits for it. The mean iteration
  (the mean inter-token latency) time-shares the two kinds;
- a request holds its slot for ``O`` iterations, so by Little's law ``n = λ·O·t(n)``;
- the time to first token is the wait for a slot (M/M/c, Erlang C, ``c = slots``, service
  ``O·t``), the wait for the iteration in flight (prefill iterations as an M/G/1 queue) and
  the prefill iteration itself.

>>> from kilowatt.plan.llm_serving import Engine
>>> from kilowatt.spec.plan import PlanModel
>>> m = PlanModel(params=7.25e9, layers=32, hidden=4096, heads=32, kv_heads=8, seq_len=4096)
>>> engine = Engine.for_model(m, memory_bytes=80 * 2**30, bandwidth_bytes_per_s=3.35e12,
...                           flops_per_s=989e12 * 0.5)
>>> state = steady_state(engine, 1.0, 512, 256)
>>> round(state.iteration_s * 1e3, 1)  # weights and a few sequences' KV at 2.68 TB/s + 2.5 ms
8.1
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kilowatt.plan.llm_serving import Engine, Percentiles

__all__ = ["SteadyState", "capacity_requests_per_s", "concurrency_limit", "steady_state"]

_FIXED_POINT_STEPS = 60
_BISECTIONS = 30


@dataclass(frozen=True)
class SteadyState:
    """What one replica settles to under Poisson arrivals at ``requests_per_s``."""

    requests_per_s: float
    slots: int
    """Most sequences running at once: ``max_sequences`` or the KV cache, whichever is less."""
    kv_limited: bool
    running: float
    """Mean running sequences (Little's law)."""
    iteration_s: float
    """Mean iteration, which is also the mean inter-token latency."""
    prefill_iteration_s: float
    """The iteration that prefills a newly admitted prompt."""
    memory_bound: bool
    ttft_s: Percentiles
    latency_p99_s: float
    """p99 time to first token plus the remaining ``O - 1`` iterations."""


def concurrency_limit(engine: Engine, prompt_tokens: int, output_tokens: int) -> tuple[int, bool]:
    """Most sequences the replica runs at once, and whether its KV cache is what limits it."""
    per_sequence = math.ceil((prompt_tokens + output_tokens / 2) / engine.block_tokens)
    by_memory = engine.kv_blocks // max(1, per_sequence)
    return min(engine.max_sequences, by_memory), by_memory <= engine.max_sequences


def capacity_requests_per_s(engine: Engine, prompt_tokens: int, output_tokens: int) -> float:
    """Highest sustained rate (by bisection): all slots busy, each held for ``O`` mean
    iterations, and prefill iterations not filling all the time."""
    slots, _ = concurrency_limit(engine, prompt_tokens, output_tokens)
    if slots < 1:
        return 0.0

    def keeps_up(rate: float) -> bool:
        phases = _phases(engine, slots, rate, prompt_tokens, output_tokens)
        busy = rate * output_tokens * phases.mean_iteration_s
        return phases.prefill_share < 1.0 and busy < slots

    low, high = 0.0, slots / (output_tokens * engine.step_overhead_s * engine.speed_factor)
    for _ in range(_BISECTIONS):
        middle = (low + high) / 2
        low, high = (middle, high) if keeps_up(middle) else (low, middle)
    return low


def steady_state(
    engine: Engine, requests_per_s: float, prompt_tokens: int, output_tokens: int
) -> SteadyState | None:
    """The replica's steady state at this rate; None when it cannot keep up."""
    slots, kv_limited = concurrency_limit(engine, prompt_tokens, output_tokens)
    if slots < 1:
        return None
    running = 0.0
    for _ in range(_FIXED_POINT_STEPS):
        phases = _phases(engine, running, requests_per_s, prompt_tokens, output_tokens)
        step = phases.mean_iteration_s
        nxt = min(float(slots), requests_per_s * output_tokens * step)
        if abs(nxt - running) < 1e-6 * max(1.0, running):
            break
        running = nxt
    phases = _phases(engine, running, requests_per_s, prompt_tokens, output_tokens)
    busy = requests_per_s * output_tokens * phases.mean_iteration_s
    if phases.prefill_share >= 1.0 or busy >= slots:  # the queue would grow without bound
        return None
    service_s = output_tokens * phases.mean_iteration_s
    ttft = Percentiles(
        *(
            _slot_wait_s(slots, requests_per_s, service_s, q)
            + _prefill_wait_s(phases, q)
            + phases.prefill_s
            for q in (0.5, 0.9, 0.99)
        )
    )
    return SteadyState(
        requests_per_s=requests_per_s,
        slots=slots,
        kv_limited=kv_limited,
        running=running,
        iteration_s=phases.mean_iteration_s,
        prefill_iteration_s=phases.prefill_s,
        memory_bound=phases.memory_bound,
        ttft_s=ttft,
        latency_p99_s=ttft.p99 + (output_tokens - 1) * phases.mean_iteration_s,
    )


@dataclass(frozen=True)
class _Phases:
    decode_s: float
    """An iteration that only decodes."""
    prefill_s: float
    """An iteration that also prefills the prompts admitted at its start."""
    prefill_share: float
    """Fraction of the time spent in prefill iterations (their load)."""
    mean_iteration_s: float
    memory_bound: bool


def _phases(
    engine: Engine, running: float, rate: float, prompt_tokens: int, output_tokens: int
) -> _Phases:
    """Decode and prefill iterations at ``running`` sequences: prompts arriving during one
    iteration are prefilled together in the next (``k`` = Poisson count given at least one)."""
    memory_s, compute_s, prefill_s = _parts(engine, running, prompt_tokens, output_tokens)
    speed, overhead = engine.speed_factor, engine.step_overhead_s
    decode = speed * (max(memory_s, compute_s) + overhead)
    mean, share, with_prefill = decode, 0.0, decode
    for _ in range(_FIXED_POINT_STEPS // 4):
        arrivals = rate * mean
        together = arrivals / -math.expm1(-arrivals) if arrivals > 1e-9 else 1.0
        with_prefill = speed * (max(memory_s, compute_s + together * prefill_s) + overhead)
        share = rate / together * with_prefill
        if share >= 1.0:
            break
        previous, mean = mean, 1.0 / (rate / together + (1.0 - share) / decode)
        if abs(mean - previous) < 1e-9 * mean:
            break
    return _Phases(decode, with_prefill, share, mean, memory_s >= compute_s)


def _prefill_wait_s(phases: _Phases, quantile: float) -> float:
    """Wait for the iteration in flight: an M/G/1 queue of prefill iterations (load
    ``share``, deterministic service, exponential tail matched to the Pollaczek-Khinchine
    mean) plus, between them, the rest of a decode iteration."""
    share = phases.prefill_share
    wait = quantile * phases.decode_s
    if share > 1.0 - quantile:
        mean_when_waiting = phases.prefill_s / (2.0 * (1.0 - share))
        wait += mean_when_waiting * math.log(share / (1.0 - quantile))
    return wait


def _parts(
    engine: Engine, running: float, prompt_tokens: int, output_tokens: int
) -> tuple[float, float, float]:
    """Memory time and decode compute time of an iteration with ``running`` sequences, and
    the compute time of prefilling one prompt (all before overhead and speed factor)."""
    context = prompt_tokens + output_tokens / 2
    memory_s = (engine.weight_bytes + running * context * engine.kv_bytes_per_token) / (
        engine.bytes_per_s
    )
    per_token = engine.flops_per_token + context * engine.attention_flops_per_context_token
    compute_s = running * per_token / engine.flops_per_s
    return memory_s, compute_s, engine.prefill_compute_s(prompt_tokens, prompt_tokens**2 / 2)


def _slot_wait_s(slots: int, rate: float, service_s: float, quantile: float) -> float:
    """Quantile of the wait for a free slot in an M/M/c queue:
    ``P(W > w) = C(c, a)·exp(-(c/S - λ)·w)``."""
    load = rate * service_s
    if load >= slots:
        return math.inf
    waits = _erlang_c(slots, load)
    if waits <= 1.0 - quantile:
        return 0.0
    return math.log(waits / (1.0 - quantile)) / (slots / service_s - rate)


def _erlang_c(servers: int, load: float) -> float:
    """Probability that an arrival waits, via the Erlang B recursion (stable for large c)."""
    blocked = 1.0
    for k in range(1, servers + 1):
        blocked = load * blocked / (k + load * blocked)
    return servers * blocked / (servers - load * (1.0 - blocked))
