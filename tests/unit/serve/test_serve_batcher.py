"""The adaptive batcher: no waiting when idle, batches under load, bounded queue, failures."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import numpy as np
import pytest

from kilowatt.errors import ServeError
from kilowatt.serve.batcher import Batcher, BatchReport, Pending
from kilowatt.serve.errors import EngineClosed, QueueFull, RequestTimeout

FAR_S = 1000.0  # a window or deadline that would hang the test if it were waited for


def _pending(value: float, deadline_s: float = FAR_S) -> Pending:
    rows = np.full((1, 2), value, dtype=np.float32)
    return Pending(rows, time.monotonic() + deadline_s, concurrent.futures.Future(), None)


class GatedModel:
    """Doubles its input; blocks each batch until the test opens the gate."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started = threading.Event()
        self.batches: list[int] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(len(batch))
        self.started.set()
        assert self.gate.wait(10)
        return batch * 2


def _batcher(predict, **overrides) -> Batcher:
    options = dict(max_batch_size=8, max_queue_delay_s=FAR_S, adaptive=True, queue_capacity=16)
    options.update(overrides)
    return Batcher(predict, **options)


def test_lone_request_runs_at_once_despite_a_long_window() -> None:
    batcher = _batcher(lambda b: b + 1)
    batcher.start()
    item = _pending(1.0)
    batcher.submit(item)
    # With a 1000 s window a non-adaptive batcher would hang here.
    assert item.future.result(timeout=10).tolist() == [[2.0, 2.0]]
    batcher.close()


def test_fixed_window_runs_a_full_batch_without_waiting_the_window() -> None:
    batcher = _batcher(lambda b: b + 1, adaptive=False, max_batch_size=2)
    batcher.start()
    items = [_pending(1.0), _pending(3.0)]
    for item in items:
        batcher.submit(item)
    assert [i.future.result(timeout=10).tolist() for i in items] == [[[2.0, 2.0]], [[4.0, 4.0]]]
    batcher.close()


def test_fixed_window_holds_a_partial_batch_for_the_delay() -> None:
    batcher = _batcher(lambda b: b, adaptive=False, max_batch_size=4, max_queue_delay_s=0.05)
    batcher.start()
    first = _pending(1.0)
    batcher.submit(first)
    second = _pending(2.0)
    batcher.submit(second)
    first.future.result(timeout=10)
    second.future.result(timeout=10)
    # Both arrived inside the window, so one pass served both.
    assert first.queue_s > 0 and first.compute_s == second.compute_s
    batcher.close()


def test_requests_queued_while_the_model_is_busy_run_as_one_batch() -> None:
    model = GatedModel()
    batcher = _batcher(model)
    batcher.start()
    first = _pending(0.0)
    batcher.submit(first)
    assert model.started.wait(10)
    queued = [_pending(float(i)) for i in range(1, 6)]
    for item in queued:
        batcher.submit(item)
    model.gate.set()
    results = [item.future.result(timeout=10) for item in queued]
    assert model.batches == [1, 5]
    assert [r[0, 0] for r in results] == [2.0, 4.0, 6.0, 8.0, 10.0]
    batcher.close()


def test_batches_never_exceed_max_batch_size() -> None:
    model = GatedModel()
    batcher = _batcher(model, max_batch_size=3)
    batcher.start()
    batcher.submit(_pending(0.0))
    assert model.started.wait(10)
    items = [_pending(1.0) for _ in range(7)]
    for item in items:
        batcher.submit(item)
    model.gate.set()
    for item in items:
        item.future.result(timeout=10)
    assert model.batches == [1, 3, 3, 1]
    batcher.close()


def test_full_queue_refuses_at_once_with_retry_after() -> None:
    model = GatedModel()
    batcher = _batcher(model, queue_capacity=2)
    batcher.start()
    batcher.submit(_pending(0.0))
    assert model.started.wait(10)
    batcher.submit(_pending(1.0))
    batcher.submit(_pending(2.0))
    with pytest.raises(QueueFull, match="queue full \\(2 requests waiting\\)") as refused:
        batcher.submit(_pending(3.0))
    assert refused.value.retry_after_s > 0
    assert batcher.high_water == 2
    model.gate.set()
    batcher.close()


def test_one_failure_fails_every_request_of_the_batch() -> None:
    def broken(batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("bad kernel")

    batcher = _batcher(broken)
    batcher.start()
    item = _pending(1.0)
    batcher.submit(item)
    with pytest.raises(ServeError, match="model failed on a batch of 1: bad kernel"):
        item.future.result(timeout=10)
    batcher.close()


def test_wrong_number_of_output_rows_is_an_error_with_a_hint() -> None:
    batcher = _batcher(lambda b: np.zeros((len(b) + 1, 2)))
    batcher.start()
    item = _pending(1.0)
    batcher.submit(item)
    with pytest.raises(ServeError, match="returned 2 rows for 1 inputs; predict"):
        item.future.result(timeout=10)
    batcher.close()


def test_request_past_its_deadline_is_dropped_before_compute() -> None:
    model = GatedModel()
    reports: list[BatchReport] = []
    batcher = _batcher(model, on_batch=reports.append)
    batcher.start()
    batcher.submit(_pending(0.0))
    assert model.started.wait(10)
    late = _pending(1.0, deadline_s=0.0)
    batcher.submit(late)
    model.gate.set()
    with pytest.raises(RequestTimeout, match="deadline passed while it queued"):
        late.future.result(timeout=10)
    batcher.close()
    assert model.batches == [1]
    assert [r.expired for r in reports] == [0, 1]


def test_close_finishes_queued_requests_then_refuses() -> None:
    model = GatedModel()
    batcher = _batcher(model)
    batcher.start()
    items = [_pending(float(i)) for i in range(3)]
    for item in items:
        batcher.submit(item)
    assert model.started.wait(10)
    closer = threading.Thread(target=batcher.close)
    closer.start()
    model.gate.set()
    closer.join(10)
    assert [item.future.result(timeout=0)[0, 0] for item in items] == [0.0, 2.0, 4.0]
    with pytest.raises(EngineClosed, match="shutting down"):
        batcher.submit(_pending(9.0))


def test_energy_of_a_batch_is_reported() -> None:
    reports: list[BatchReport] = []
    batcher = _batcher(lambda b: b, energy=lambda run: (run(), 3.0), on_batch=reports.append)
    batcher.start()
    item = _pending(1.0)
    batcher.submit(item)
    item.future.result(timeout=10)
    batcher.close()
    assert [(r.batch_rows, r.requests, r.energy_j) for r in reports] == [(1, 1, 3.0)]


def test_forward_pass_overrunning_the_timeout_fails_its_requests() -> None:
    model = GatedModel()  # never opened until the end: a hung model
    batcher = _batcher(model, compute_timeout_s=0.05)
    batcher.start()
    item = _pending(1.0)
    batcher.submit(item)
    with pytest.raises(RequestTimeout, match=r"ran longer than the 0\.05 s timeout"):
        item.future.result(timeout=10)
    model.gate.set()
    batcher.close()
