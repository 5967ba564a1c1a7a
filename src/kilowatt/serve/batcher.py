"""The adaptive dynamic batcher: a bounded queue and one inference thread per model version.

Requests join a bounded queue; the inference thread takes everything queued (up to
``max_batch_size`` rows) the moment the model is free, runs one forward pass and resolves
each request's future. A lone request therefore never waits for a batching window, and
under load batches grow by themselves to the arrival rate. With ``adaptive=False`` the
thread waits up to ``max_queue_delay_s`` for a batch to fill (the classic window).

The event loop only enqueues and awaits; inference runs on the thread, and results come
back with one ``call_soon_threadsafe`` per batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kilowatt.errors import ServeError
from kilowatt.serve.errors import EngineClosed, QueueFull, RequestTimeout

__all__ = ["BatchReport", "Batcher", "Pending", "row_count"]

_log = logging.getLogger(__name__)


@dataclass(eq=False)
class Pending:
    """One admitted request: its rows, its deadline, and where its answer goes.

    ``rows`` is one array, or for a model with several inputs a dict of arrays by input
    name, each with the same number of rows.
    """

    rows: np.ndarray | dict[str, np.ndarray]
    deadline_s: float
    future: asyncio.Future[Any] | concurrent.futures.Future[Any]
    loop: asyncio.AbstractEventLoop | None
    enqueued_s: float = field(default_factory=time.monotonic)
    queue_s: float = 0.0
    compute_s: float = 0.0

    @property
    def count(self) -> int:
        """Rows (samples) this request adds to a batch."""
        return row_count(self.rows)


def row_count(rows: np.ndarray | dict[str, np.ndarray]) -> int:
    """Samples in a request's input: the first axis, shared by every named input."""
    if isinstance(rows, dict):
        return len(next(iter(rows.values())))
    return len(rows)


def _stack(parts: list[np.ndarray | dict[str, np.ndarray]]) -> np.ndarray | dict[str, np.ndarray]:
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    if isinstance(first, dict):
        return {name: np.concatenate([p[name] for p in parts]) for name in first}  # type: ignore[index]
    return np.concatenate(parts)  # type: ignore[arg-type]


@dataclass(frozen=True)
class BatchReport:
    """What one forward pass did, for metrics and energy accounting."""

    batch_rows: int
    requests: int
    queue_s: tuple[float, ...]
    compute_s: float
    energy_j: float | None
    expired: int
    failed: bool


PredictFn = Callable[[Any], Any]


class Batcher:
    """Bounded queue + inference thread for one model version.

    Args:
        predict: runs one batch (rows stacked on axis 0) and returns one row per input row.
        max_batch_size: most rows per forward pass.
        max_queue_delay_s: longest wait for a batch to fill when ``adaptive`` is false.
        adaptive: run as soon as the model is free rather than waiting for the window.
        queue_capacity: most requests waiting; more are refused with ``Overloaded``.
        compute_timeout_s: a forward pass running longer fails its requests at once
            (``RequestTimeout``); the stuck pass itself cannot be interrupted.
        on_batch: called on the inference thread after each batch.
        energy: optional ``(run) -> (run's result, joules or None)``, wrapping each
            forward pass in a meter window (``EnergyWindows`` in ``engine``).
    """

    def __init__(
        self,
        predict: PredictFn,
        *,
        max_batch_size: int,
        max_queue_delay_s: float,
        adaptive: bool,
        queue_capacity: int,
        compute_timeout_s: float = 30.0,
        on_batch: Callable[[BatchReport], None] | None = None,
        energy: Callable[[Callable[[], Any]], tuple[Any, float | None]] | None = None,
        name: str = "batcher",
    ) -> None:
        self._predict = predict
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self.adaptive = adaptive
        self.queue_capacity = queue_capacity
        self._on_batch = on_batch
        self._energy = energy
        self._queue: deque[Pending] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._busy = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.compute_timeout_s = compute_timeout_s
        self._running: list[Pending] = []
        self._running_since = 0.0
        self._watch_stop = threading.Event()
        self._watchdog = threading.Thread(target=self._watch, name=f"{name}-watchdog", daemon=True)
        # EWMA of seconds per forward pass, for admission control's wait estimate.
        self.batch_compute_s = 0.0
        self.high_water = 0

    def start(self) -> None:
        """Start the inference thread and its watchdog."""
        self._thread.start()
        self._watchdog.start()

    def _watch(self) -> None:
        # One check every tenth of the timeout, instead of a timer per request.
        period_s = max(self.compute_timeout_s / 10, 0.01)
        while not self._watch_stop.wait(period_s):
            with self._cond:
                running = self._running
                overdue = time.monotonic() - self._running_since > self.compute_timeout_s
                if not running or not overdue:
                    continue
                self._running = []
            error = RequestTimeout(
                f"the model ran longer than the {self.compute_timeout_s:g} s timeout on this batch"
            )
            _resolve_all(running, [None] * len(running), error)

    @property
    def depth(self) -> int:
        """Requests waiting (not counting the batch that is running)."""
        return len(self._queue)

    def estimated_wait_s(self) -> float:
        """Rough seconds until a request queued now is answered."""
        batches_ahead = len(self._queue) // self.max_batch_size + 1 + int(self._busy)
        return batches_ahead * self.batch_compute_s

    def submit(self, item: Pending) -> None:
        """Queue a request, or raise ``Overloaded`` at once when the queue is full/closed."""
        with self._cond:
            if self._closing:
                raise EngineClosed("this model version is shutting down; retry", 1.0)
            if len(self._queue) >= self.queue_capacity:
                retry_s = max(self.estimated_wait_s(), 0.001)
                raise QueueFull(
                    f"queue full ({self.queue_capacity} requests waiting); retry later",
                    retry_s,
                )
            self._queue.append(item)
            self.high_water = max(self.high_water, len(self._queue))
            self._cond.notify()

    def close(self, timeout_s: float | None = None) -> bool:
        """Refuse new requests, finish the queued ones, stop the thread; True if drained."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self._watch_stop.set()
        return not self._thread.is_alive()

    def _take_batch(self) -> list[Pending] | None:
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                self._cond.wait()
            if not self.adaptive:
                self._wait_for_window()
            batch, rows = [], 0
            while self._queue and (not batch or rows + self._queue[0].count <= self.max_batch_size):
                item = self._queue.popleft()
                batch.append(item)
                rows += item.count
            self._busy = True
            return batch

    def _wait_for_window(self) -> None:
        # Called holding the lock: wait until the batch is full or the oldest request
        # has waited max_queue_delay_s.
        close_at = self._queue[0].enqueued_s + self.max_queue_delay_s
        while not self._closing:
            rows = sum(item.count for item in self._queue)
            left_s = close_at - time.monotonic()
            if rows >= self.max_batch_size or left_s <= 0:
                return
            self._cond.wait(left_s)

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            try:
                self._run_batch(batch)
            finally:
                self._busy = False

    def _run_batch(self, batch: list[Pending]) -> None:
        now = time.monotonic()
        live = [item for item in batch if item.deadline_s > now]
        expired = [item for item in batch if item.deadline_s <= now]
        for item in expired:
            _resolve(item, None, RequestTimeout("the request's deadline passed while it queued"))
        for item in live:
            item.queue_s = now - item.enqueued_s
        if not live:
            self._report(live, 0, 0.0, None, len(expired), failed=False)
            return
        with self._cond:
            self._running, self._running_since = live, now
        rows = _stack([item.rows for item in live])
        start = time.perf_counter()
        error: BaseException | None = None
        outputs: Any = None
        energy_j: float | None = None
        try:
            if self._energy is not None:
                outputs, energy_j = self._energy(lambda: self._predict(rows))
            else:
                outputs = self._predict(rows)
            parts = _split(outputs, [item.count for item in live])
        except Exception as exc:  # one failure fails every request of the batch
            error = exc
        compute_s = time.perf_counter() - start
        with self._cond:
            self._running = []
        self.batch_compute_s = (
            compute_s if self.batch_compute_s == 0 else 0.8 * self.batch_compute_s + 0.2 * compute_s
        )
        for item in live:
            item.compute_s = compute_s
        if error is None:
            _resolve_all(live, parts)
        else:
            failure = ServeError(f"the model failed on a batch of {row_count(rows)}: {error}")
            _resolve_all(live, [None] * len(live), failure)
        self._report(live, row_count(rows), compute_s, energy_j, len(expired), error is not None)

    def _report(
        self,
        live: list[Pending],
        rows: int,
        compute_s: float,
        energy_j: float | None,
        expired: int,
        failed: bool,
    ) -> None:
        if self._on_batch is None:
            return
        report = BatchReport(
            batch_rows=rows,
            requests=len(live),
            queue_s=tuple(item.queue_s for item in live),
            compute_s=compute_s,
            energy_j=energy_j,
            expired=expired,
            failed=failed,
        )
        try:
            self._on_batch(report)
        except Exception:  # metrics must never take the inference thread down
            _log.exception("recording a batch failed")


def _split(outputs: Any, counts: list[int]) -> list[Any]:
    """Cut a batch's outputs back into one part per request, checking the row count."""
    total = sum(counts)
    if isinstance(outputs, tuple | list) and not isinstance(outputs, np.ndarray):
        columns = [_split(np.asarray(out), counts) for out in outputs]
        return [tuple(col[i] for col in columns) for i in range(len(counts))]
    if isinstance(outputs, dict):
        columns_by_key = {key: _split(np.asarray(v), counts) for key, v in outputs.items()}
        return [{k: c[i] for k, c in columns_by_key.items()} for i in range(len(counts))]
    outputs = np.asarray(outputs)
    if outputs.ndim == 0 or outputs.shape[0] != total:
        raise ServeError(
            f"the model returned {outputs.shape[0] if outputs.ndim else 'a scalar'} rows for "
            f"{total} inputs; predict(batch) must return one output row per input row"
        )
    if len(counts) == 1:
        return [outputs]
    bounds = np.cumsum(counts)[:-1]
    return list(np.split(outputs, bounds))


def _resolve_all(items: list[Pending], parts: list[Any], error: BaseException | None = None):
    by_loop: dict[Any, list[tuple[Pending, Any]]] = {}
    for item, part in zip(items, parts, strict=True):
        if item.loop is None:
            _set(item.future, part, error)
        else:
            by_loop.setdefault(item.loop, []).append((item, part))
    for loop, pairs in by_loop.items():
        # One wake-up of the event loop per batch, not per request.
        # The loop may have closed: then nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_set_many, pairs, error)


def _resolve(item: Pending, part: Any, error: BaseException | None) -> None:
    _resolve_all([item], [part], error)


def _set_many(pairs: list[tuple[Pending, Any]], error: BaseException | None) -> None:
    for item, part in pairs:
        _set(item.future, part, error)


def _set(future: Any, part: Any, error: BaseException | None) -> None:
    if future.done():  # the caller gave up (timeout or disconnect)
        return
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(part)
    except (asyncio.InvalidStateError, concurrent.futures.InvalidStateError):
        pass  # cancelled between the check and the set, from another thread
