"""The continuous-batching generation engine: one scheduler thread, one step at a time.

Every step the scheduler builds one batch from

1. every running sequence that is decoding (one token each); if the KV pool cannot hold
   their next token, the most recently admitted sequence is preempted: its blocks are
   freed and it goes back to the front of the queue, to be recomputed from its tokens;
2. prompt chunks, up to ``prefill_tokens_per_step`` tokens in all, so a long prompt is fed
   over several steps beside the decoders instead of stalling their next token;
3. new requests from the queue, in arrival order, while blocks and the budget allow.

A sequence that is done (max tokens, a stop string, end of text) leaves at once and its
blocks go back to the pool; a new one joins at the next step. A sequence's tokens are one
list (prompt then output) with a count of those already in the cache, so a prompt chunk,
a decode step and the recomputation of a preempted sequence are the same operation.

A deadline bounds the whole generation, not only the wait to start: a request still
queued or still generating when its deadline passes is stopped at the next step, its KV
blocks are freed, and its stream raises ``RequestTimeout`` (HTTP 504; a stream that already
sent tokens ends with an OpenAI-style error event). Its report has ``finish_reason``
``"timeout"``.

Use ``await engine.submit(...)`` from an event loop (``GenerationStream`` is an async
iterator of ``TokenDelta`` ending with a ``Finished``), or ``engine.generate(...)`` from
plain threads. ``run_step()`` is one iteration of the scheduler; ``start()`` runs it on a
thread, and a caller may instead drive it by hand.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from kilowatt.errors import KilowattError
from kilowatt.serve.errors import (
    DeadlineUnmeetable,
    EngineClosed,
    InvalidInput,
    QueueFull,
    RequestTimeout,
)
from kilowatt.serve.generate.blocks import BlockManager
from kilowatt.serve.generate.detokenize import IncrementalDetokenizer
from kilowatt.serve.generate.lm import LMRunner, StepInput, check_prompt
from kilowatt.serve.generate.sampling import SamplingParams, choose_token

__all__ = [
    "EngineConfig",
    "Finished",
    "GenerationEngine",
    "GenerationReport",
    "GenerationStream",
    "TokenDelta",
]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    """Scheduling and memory limits.

    Attributes:
        num_blocks: KV blocks in the pool (the cache's memory budget).
        block_size: token slots per block.
        max_running: most sequences in one step.
        prefill_tokens_per_step: most prompt tokens fed in one step (the chunk budget).
        queue_capacity: most requests waiting to start; more are refused (QueueFull).
    """

    num_blocks: int = 256
    block_size: int = 16
    max_running: int = 64
    prefill_tokens_per_step: int = 128
    queue_capacity: int = 1024


@dataclass(frozen=True)
class TokenDelta:
    """New text of one sequence (may be empty while a stop string is still possible)."""

    text: str
    token_id: int


@dataclass(frozen=True)
class GenerationReport:
    """What one request cost: latency, tokens and energy.

    Attributes:
        ttft_s: arrival to first token.
        inter_token_s: gaps between successive tokens.
        energy_j: this request's share of the joules of the steps it took part in.
        energy_method: how the joules were obtained (``kilowatt.meter`` methods).
    """

    prompt_tokens: int
    completion_tokens: int
    queue_s: float
    ttft_s: float
    inter_token_s: tuple[float, ...]
    duration_s: float
    energy_j: float | None
    energy_method: str | None
    preemptions: int
    finish_reason: str

    @property
    def energy_per_token_j(self) -> float | None:
        """Joules per output token (None when no meter ran or nothing was generated)."""
        if self.energy_j is None or not self.completion_tokens:
            return None
        return self.energy_j / self.completion_tokens


@dataclass(frozen=True)
class Finished:
    """The end of a sequence: the full text, why it stopped, and its report."""

    text: str
    finish_reason: str  # "stop" | "length" | "abort"
    report: GenerationReport
    token_ids: tuple[int, ...]


@dataclass(eq=False)
class _Sequence:
    seq_id: str
    tokens: list[int]
    prompt_len: int
    params: SamplingParams
    deadline_s: float
    sink: Callable[[Any], None]
    arrival_s: float
    detokenizer: IncrementalDetokenizer
    generator: torch.Generator | None = None
    computed: int = 0
    admitted_s: float | None = None
    token_times: list[float] = field(default_factory=list)
    energy_j: float | None = None
    energy_method: str | None = None
    emitted: str = ""
    preemptions: int = 0

    @property
    def output(self) -> list[int]:
        return self.tokens[self.prompt_len :]

    @property
    def pending(self) -> int:
        return len(self.tokens) - self.computed


class GenerationStream:
    """The tokens of one submitted request, as an async iterator.

    Iterating yields ``TokenDelta`` items and then one ``Finished``; an engine error is
    raised from the iterator. Leaving early (``aclose``, a cancelled task) aborts the
    sequence, which frees its KV blocks at the next step.
    """

    def __init__(self, engine: GenerationEngine, seq_id: str, prompt_tokens: int) -> None:
        self._engine = engine
        self.seq_id = seq_id
        self.prompt_tokens = prompt_tokens
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._done = False

    def put(self, item: Any) -> None:
        self._queue.put_nowait(item)

    async def __aiter__(self) -> AsyncIterator[TokenDelta | Finished]:
        try:
            while True:
                item = await self._queue.get()
                if isinstance(item, BaseException):
                    self._done = True
                    raise item
                yield item
                if isinstance(item, Finished):
                    self._done = True
                    return
        finally:
            if not self._done:
                self._engine.abort(self.seq_id)

    async def collect(self) -> Finished:
        """Wait for the whole answer."""
        async for item in self:
            if isinstance(item, Finished):
                return item
        raise AssertionError("stream ended without Finished")  # the engine always finishes


class GenerationEngine:
    """Serves one causal LM with iteration-level batching over a paged KV cache.

    Args:
        runner: the model (``lm.load_runner``).
        config: pool size, batch and chunk limits, queue capacity.
        meter: optional energy meter (``begin_window``/``end_window``); each step's joules
            are shared among its sequences by the tokens each fed.
        on_finish: called with every finished request's ``GenerationReport`` (any thread).
        clock: monotonic seconds; deadlines passed to ``submit`` are on this clock.

    Example:
        >>> engine = GenerationEngine(load_runner("tiny", num_blocks=64, block_size=16))
        >>> engine.start()  # doctest: +SKIP
        >>> engine.generate("The grid", SamplingParams(max_tokens=8, temperature=0)).text
    """

    def __init__(
        self,
        runner: LMRunner,
        config: EngineConfig | None = None,
        *,
        meter: Any = None,
        on_finish: Callable[[GenerationReport], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.runner = runner
        self.clock = clock
        self.config = config or EngineConfig()
        self.blocks = BlockManager(self.config.num_blocks, self.config.block_size)
        self._meter = meter
        self._on_finish = on_finish
        self._ids = itertools.count()
        self._lock = threading.Condition()
        self._incoming: list[_Sequence] = []
        self._aborts: set[str] = set()
        self._waiting: deque[_Sequence] = deque()
        self._running: list[_Sequence] = []
        self._closed = False
        self._thread: threading.Thread | None = None
        self._step_s = 0.0  # moving average of a step, for admission estimates
        self.steps = 0
        self.busy_s = 0.0  # seconds spent in model steps
        self.tokens_fed = 0  # prompt and generated tokens that went through the model
        # The prefill share of the above (prompt chunks and recomputation); a step's
        # seconds are split between prefill and decode by the tokens each fed.
        self.prefill_tokens_fed = 0
        self.prefill_busy_s = 0.0

    # ---- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Run the scheduler on a thread (``run_step`` in a loop)."""
        self._thread = threading.Thread(target=self._loop, name="generate", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float | None = 30.0) -> None:
        """Refuse new requests, finish the admitted ones, stop the thread."""
        with self._lock:
            self._closed = True
            self._lock.notify()
        if self._thread is not None:
            self._thread.join(timeout_s)

    @property
    def waiting(self) -> int:
        """Requests queued and not yet started."""
        return len(self._waiting) + len(self._incoming)

    @property
    def running(self) -> int:
        """Sequences in the running batch."""
        return len(self._running)

    # ---- submitting ------------------------------------------------------------------

    def encode(self, prompt: str | list[int]) -> list[int]:
        """Token ids of a prompt given as text or ids."""
        if isinstance(prompt, str):
            return list(self.runner.tokenizer.encode(prompt))
        return list(prompt)

    async def submit(
        self, prompt: str | list[int], params: SamplingParams, deadline_s: float | None = None
    ) -> GenerationStream:
        """Queue a request; returns its stream. Refuses at once what cannot be served.

        ``deadline_s`` (on ``clock``) bounds the whole generation; None means no deadline.
        """
        tokens = self.encode(prompt)
        loop = asyncio.get_running_loop()
        seq_id = f"seq-{next(self._ids)}"
        stream = GenerationStream(self, seq_id, len(tokens))

        def sink(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(stream.put, item)
            except RuntimeError:  # the caller's event loop is gone: nobody is listening
                self.abort(seq_id)

        self._enqueue(seq_id, tokens, params, deadline_s, sink)
        return stream

    def generate(
        self, prompt: str | list[int], params: SamplingParams, timeout_s: float = 300.0
    ) -> Finished:
        """Blocking variant of ``submit`` + ``collect`` for callers without an event loop;
        ``timeout_s`` is the request's deadline."""
        results: queue.Queue[Any] = queue.Queue()
        seq_id = f"seq-{next(self._ids)}"
        deadline_s = self.clock() + timeout_s
        self._enqueue(seq_id, self.encode(prompt), params, deadline_s, results.put)
        while True:
            item = results.get(timeout=timeout_s)
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, Finished):
                return item

    def abort(self, seq_id: str) -> None:
        """End a sequence (e.g. its client left); its blocks are freed at the next step."""
        with self._lock:
            self._aborts.add(seq_id)
            self._lock.notify()

    def _enqueue(
        self,
        seq_id: str,
        tokens: list[int],
        params: SamplingParams,
        deadline_s: float | None,
        sink: Callable[[Any], None],
    ) -> None:
        check_prompt(self.runner, len(tokens), params.max_tokens)
        needed = self.blocks.blocks_for(len(tokens) + params.max_tokens)
        if needed > self.blocks.num_blocks:
            raise InvalidInput(
                f"the prompt ({len(tokens)} tokens) plus max_tokens ({params.max_tokens}) "
                f"needs {needed} KV blocks but the pool has {self.blocks.num_blocks}; "
                "lower max_tokens or start the server with more kv blocks"
            )
        deadline_s = deadline_s if deadline_s is not None else math.inf
        detokenizer = IncrementalDetokenizer(self.runner.tokenizer)
        sequence = _Sequence(
            seq_id, tokens, len(tokens), params, deadline_s, sink, self.clock(), detokenizer
        )
        sequence.generator = params.generator()
        with self._lock:
            self._admit(sequence)
            self._incoming.append(sequence)
            self._lock.notify()

    def _admit(self, sequence: _Sequence) -> None:
        if self._closed:
            raise EngineClosed(f"model {self.runner.name!r} is shutting down", 1.0)
        if self.waiting >= self.config.queue_capacity:
            raise QueueFull(
                f"model {self.runner.name!r} has {self.waiting} requests waiting "
                f"(capacity {self.config.queue_capacity}); retry later",
                retry_after_s=max(self._step_s, 0.05),
            )
        wait_s = self.estimated_wait_s()
        left_s = sequence.deadline_s - self.clock()
        if wait_s > left_s:
            raise DeadlineUnmeetable(
                f"model {self.runner.name!r} cannot start within the deadline "
                f"(estimated wait {wait_s * 1000:.0f} ms, {max(left_s, 0) * 1000:.0f} ms left)",
                retry_after_s=max(wait_s, 0.001),
            )

    def achieved_flops(self) -> float | None:
        """Model FLOP/s while busy: 2 x parameters per token fed (None before any step)."""
        if self.busy_s <= 0:
            return None
        return 2.0 * self.runner.parameters * self.tokens_fed / self.busy_s

    def achieved_prefill_flops(self) -> float | None:
        """Model FLOP/s of prefill (prompt chunks, recomputation): 2 x parameters per
        prefill token over the prefill share of the busy seconds (None before any prefill).
        This rate is what time to first token rests on, apart from queueing."""
        if self.prefill_busy_s <= 0:
            return None
        return 2.0 * self.runner.parameters * self.prefill_tokens_fed / self.prefill_busy_s

    def estimated_wait_s(self) -> float:
        """Time until a request arriving now gets its first step, from the queue's prompts."""
        queued = [*self._waiting, *self._incoming]
        tokens = sum(s.pending for s in queued)
        return self._step_s * tokens / max(self.config.prefill_tokens_per_step, 1)

    # ---- the scheduler loop ----------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._has_work():
                    if self._closed:
                        return
                    self._lock.wait()
            self.run_step()

    def _has_work(self) -> bool:
        return bool(self._incoming or self._aborts or self._waiting or self._running)

    def run_step(self) -> bool:
        """One scheduler iteration: take new requests and aborts, stop overdue requests,
        run one model step. Returns False when there was nothing to do."""
        with self._lock:
            if not self._has_work():
                return False
            self._waiting.extend(self._incoming)
            self._incoming.clear()
            aborts, self._aborts = self._aborts, set()
        self._apply_aborts(aborts)
        self._expire_overdue()
        try:
            self._step()
        except Exception as exc:  # a model failure fails its batch, never the thread
            _log.exception("generation step failed")
            self._fail_all(exc)
        return True

    def _apply_aborts(self, aborts: set[str]) -> None:
        for sequence in [*self._running, *self._waiting]:
            if sequence.seq_id in aborts:
                self._finish(sequence, "abort")

    def _expire_overdue(self) -> None:
        """Stop every request whose deadline has passed, queued or generating."""
        now = self.clock()
        for sequence in [s for s in [*self._running, *self._waiting] if s.deadline_s < now]:
            made = len(sequence.output)
            when = (
                f"after {made} of {sequence.params.max_tokens} tokens"
                if sequence.admitted_s is not None
                else "before it started"
            )
            error = RequestTimeout(
                f"request {sequence.seq_id} passed its deadline {when}; its generation was "
                "stopped. Allow more time or ask for fewer max_tokens"
            )
            self._finish(sequence, "timeout", error=error)

    def _schedule(self) -> list[tuple[_Sequence, int]]:
        """This step's (sequence, tokens to feed) pairs."""
        batch = self._schedule_decoders()
        budget = self.config.prefill_tokens_per_step
        for sequence in self._running:
            if sequence.pending > 1 and budget > 0:
                fed = self._grant_chunk(sequence, budget)
                if fed:
                    batch.append((sequence, fed))
                    budget -= fed
        while self._waiting and budget > 0 and len(self._running) < self.config.max_running:
            sequence = self._waiting[0]
            if not self.blocks.can_grow(sequence.seq_id, len(sequence.tokens) + 1):
                break  # start only what can finish its prompt: it waits, in arrival order
            fed = self._grant_chunk(sequence, budget)
            self._waiting.popleft()
            sequence.admitted_s = sequence.admitted_s or self.clock()
            self._running.append(sequence)
            batch.append((sequence, fed))
            budget -= fed
        return batch

    def _schedule_decoders(self) -> list[tuple[_Sequence, int]]:
        batch = []
        for sequence in list(self._running):
            if sequence not in self._running or sequence.pending != 1:
                continue
            while not self.blocks.can_grow(sequence.seq_id, sequence.computed + 1):
                victim = self._running[-1]
                self._preempt(victim)
                batch = [(s, n) for s, n in batch if s is not victim]
                if victim is sequence:
                    break
            if sequence in self._running:
                self.blocks.grow(sequence.seq_id, sequence.computed + 1)
                batch.append((sequence, 1))
        return batch

    def _grant_chunk(self, sequence: _Sequence, budget: int) -> int:
        # Feed as much of the pending tokens as the budget and the free blocks allow.
        held = len(self.blocks.table(sequence.seq_id))
        room = (held + self.blocks.free_blocks) * self.blocks.block_size - sequence.computed
        fed = min(sequence.pending, budget, room)
        if fed > 0:
            self.blocks.grow(sequence.seq_id, sequence.computed + fed)
        return max(fed, 0)

    def _preempt(self, sequence: _Sequence) -> None:
        # Recompute rather than swap: the tokens are kept, the cache is rebuilt later.
        self._running.remove(sequence)
        self._release(sequence)
        sequence.computed = 0
        sequence.preemptions += 1
        self._waiting.appendleft(sequence)

    def _step(self) -> None:
        batch = self._schedule()
        while not batch and self._running:
            # Prompt chunks holding blocks can starve each other; free the newest.
            self._preempt(self._running[-1])
            batch = self._schedule()
        if not batch:
            return
        work = [
            StepInput(s.seq_id, s.tokens[s.computed : s.computed + n], s.computed) for s, n in batch
        ]
        started = self.clock()
        logits, energy = self._measured(lambda: self.runner.step(work, self.blocks))
        now = self.clock()
        self._account(batch, now - started)
        fed_total = sum(n for _, n in batch)
        for row, (sequence, fed) in enumerate(batch):
            sequence.computed += fed
            if energy is not None:
                joules, method = energy
                sequence.energy_j = (sequence.energy_j or 0.0) + joules * fed / fed_total
                sequence.energy_method = method
            if sequence.pending == 0:  # the whole context is cached: its next token is due
                token = choose_token(logits[row], sequence.params, sequence.generator)
                self._append(sequence, token, now)

    def _account(self, batch: list[tuple[_Sequence, int]], step_s: float) -> None:
        self._step_s = 0.8 * self._step_s + 0.2 * step_s if self.steps else step_s
        self.steps += 1
        fed_total = sum(n for _, n in batch)
        prefill = sum(n for s, n in batch if not _is_decode(s, n))
        self.busy_s += step_s
        self.tokens_fed += fed_total
        self.prefill_tokens_fed += prefill
        self.prefill_busy_s += step_s * prefill / fed_total

    def _measured(self, run: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, Any]:
        if self._meter is None:
            return run(), None
        key = f"generate-step-{self.steps}"
        try:
            self._meter.begin_window(key)
        except KilowattError:
            return run(), None
        logits = run()
        measurement = self._meter.end_window(key)
        return logits, (float(measurement.energy_j), measurement.method)

    # ---- tokens out ------------------------------------------------------------------

    def _append(self, sequence: _Sequence, token: int, now: float) -> None:
        sequence.tokens.append(token)
        sequence.token_times.append(now)
        before = sequence.detokenizer.text  # the answer's text without this token
        text = sequence.detokenizer.append(token)
        reason = None
        cut = _earliest_stop(text, sequence.params.stop)
        if cut is not None:
            text, reason = text[:cut], "stop"
        elif token == getattr(self.runner.tokenizer, "eos_token_id", None):
            text, reason = before, "stop"
        elif len(sequence.output) >= sequence.params.max_tokens:  # admission kept it in context
            reason = "length"
        safe = text if reason else _held_back(text, sequence.params.stop)
        if len(safe) > len(sequence.emitted) or not reason:
            sequence.sink(TokenDelta(safe[len(sequence.emitted) :], token))
            sequence.emitted = safe
        if reason:
            self._finish(sequence, reason, text)

    def _finish(
        self,
        sequence: _Sequence,
        reason: str,
        text: str | None = None,
        error: KilowattError | None = None,
    ) -> None:
        """Take ``sequence`` out, free its blocks, and end its stream with ``Finished``
        (or ``error``)."""
        if sequence in self._running:
            self._running.remove(sequence)
        elif sequence in self._waiting:
            self._waiting.remove(sequence)
        self._release(sequence)
        report = self._report(sequence, reason)
        final = text if text is not None else sequence.emitted
        sequence.sink(error or Finished(final, reason, report, tuple(sequence.output)))
        if self._on_finish is not None:
            try:
                self._on_finish(report)
            except Exception:  # metrics must never break serving
                _log.exception("on_finish callback failed")

    def _release(self, sequence: _Sequence) -> None:
        self.blocks.release(sequence.seq_id)
        self.runner.release(sequence.seq_id)

    def _report(self, sequence: _Sequence, reason: str) -> GenerationReport:
        times = sequence.token_times
        end = times[-1] if times else self.clock()
        return GenerationReport(
            prompt_tokens=sequence.prompt_len,
            completion_tokens=len(sequence.output),
            queue_s=(sequence.admitted_s or end) - sequence.arrival_s,
            ttft_s=(times[0] if times else end) - sequence.arrival_s,
            inter_token_s=tuple(b - a for a, b in itertools.pairwise(times)),
            duration_s=end - sequence.arrival_s,
            energy_j=sequence.energy_j,
            energy_method=sequence.energy_method,
            preemptions=sequence.preemptions,
            finish_reason=reason,
        )

    def _fail_all(self, error: Exception) -> None:
        failure = KilowattError(f"generation failed: {error}")
        for sequence in list(self._running):
            self._running.remove(sequence)
            self._release(sequence)
            sequence.sink(failure)


def _is_decode(sequence: _Sequence, fed: int) -> bool:
    """Whether feeding ``fed`` tokens (before the step) is one decode step: the single
    newest token of a sequence whose prompt is cached. Anything else is prefill."""
    return fed == 1 and sequence.computed == len(sequence.tokens) - 1 >= sequence.prompt_len


def _earliest_stop(text: str, stops: tuple[str, ...]) -> int | None:
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def _held_back(text: str, stops: tuple[str, ...]) -> str:
    """``text`` minus a tail that could still become a stop string or a split character."""
    keep = len(text)
    while keep and text[keep - 1] == "\ufffd":  # an incomplete UTF-8 sequence so far
        keep -= 1
    for stop in stops:
        for size in range(min(len(stop) - 1, keep), 0, -1):
            if text[:keep].endswith(stop[:size]):
                keep -= size
                break
    return text[:keep]
