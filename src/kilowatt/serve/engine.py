"""One served model version: its handler, its batcher, warm-up, and admission control."""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from kilowatt.errors import KilowattError, ServeError
from kilowatt.serve.batcher import Batcher, BatchReport, Pending
from kilowatt.serve.errors import DeadlineUnmeetable, EngineClosed, InvalidInput, ModelNotReady
from kilowatt.serve.handler import ModelHandler, numpy_dtype
from kilowatt.spec.serve import BatchingSpec

__all__ = ["EnergyWindows", "ModelEngine"]


class EnergyWindows:
    """Adapts a ``kilowatt.meter`` meter (``begin_window``/``end_window``) to batches.

    A meter failure never fails inference: the batch then reports no energy.
    """

    def __init__(self, meter: Any) -> None:
        self._meter = meter
        self._ids = itertools.count()
        self._lock = threading.Lock()

    def __call__(self, run: Callable[[], Any]) -> tuple[Any, float | None]:
        with self._lock:
            key = f"serve-batch-{next(self._ids)}"
        try:
            self._meter.begin_window(key)
        except Exception:
            return run(), None
        outputs = run()
        try:
            measurement = self._meter.end_window(key)
        except Exception:
            return outputs, None
        return outputs, float(measurement.energy_j)


@dataclass(frozen=True)
class TensorInfo:
    """Name, datatype and shape (``-1`` = any) of one model input or output."""

    name: str
    datatype: str
    shape: tuple[int, ...]


class ModelEngine:
    """Serves one model version: a loaded handler behind a bounded, batching queue.

    Usable without HTTP: ``await engine.infer(rows)`` from any event loop, or
    ``engine.infer_sync(rows)`` from plain threads.

    Args:
        name: model name.
        version: version label.
        handler: the model (``load()`` + ``predict(batch)``).
        batching: batch size, delay, adaptivity and queue capacity.
        timeout_s: a forward pass running longer fails its requests (RequestTimeout).
        on_batch: called after every batch (on the inference thread).
        meter: optional energy meter with ``begin_window``/``end_window``.
    """

    def __init__(
        self,
        name: str,
        version: str,
        handler: ModelHandler,
        batching: BatchingSpec,
        *,
        timeout_s: float = 30.0,
        on_batch: Callable[[ModelEngine, BatchReport], None] | None = None,
        meter: Any = None,
    ) -> None:
        self.name = name
        self.version = version
        self.handler = handler
        self.batching = batching
        self.ready = False
        self._closed = False
        self.input_shape: tuple[int, ...] | None = None
        self.input_dtype = np.dtype(np.float32)
        self.outputs: list[TensorInfo] = []
        self._on_batch = on_batch
        self._batcher = Batcher(
            handler.predict,
            max_batch_size=batching.max_batch_size,
            max_queue_delay_s=batching.max_queue_delay_s,
            adaptive=batching.adaptive,
            queue_capacity=batching.queue_capacity,
            compute_timeout_s=timeout_s,
            on_batch=self._report,
            energy=EnergyWindows(meter) if meter is not None else None,
            name=f"infer-{name}-{version}",
        )

    def _report(self, report: BatchReport) -> None:
        if self._on_batch is not None:
            self._on_batch(self, report)

    @property
    def batcher(self) -> Batcher:
        """The engine's queue and inference thread."""
        return self._batcher

    def load(self) -> None:
        """Load the model, run a warm-up batch, start the inference thread; then ready."""
        try:
            self.handler.load()
        except KilowattError:
            raise
        except (OSError, ValueError, RuntimeError, ImportError) as exc:
            raise ServeError(f"model {self.name!r} v{self.version} failed to load: {exc}") from exc
        shape = getattr(self.handler, "input_shape", None)
        self.input_shape = tuple(shape) if shape is not None else None
        self.input_dtype = numpy_dtype(getattr(self.handler, "input_dtype", "FP32") or "FP32")
        self._warm_up()
        self._batcher.start()
        self.ready = True

    def _warm_up(self) -> None:
        # The first passes pay for allocation and kernel selection; pay them before ready.
        if self.input_shape is None:
            return
        for rows in sorted({1, self.batching.max_batch_size}):
            sample = np.zeros((rows, *self.input_shape), dtype=self.input_dtype)
            out = self.handler.predict(sample)
        self.outputs = _describe_outputs(out)

    def check_rows(self, rows: np.ndarray) -> np.ndarray:
        """Validate a request's tensor against the model input; returns it with a batch axis.

        Raises:
            ServeError: wrong shape or datatype, with the expected ones in the message.
        """
        if rows.dtype != self.input_dtype:
            raise InvalidInput(
                f"input datatype {rows.dtype} does not match the model's {self.input_dtype}"
            )
        if self.input_shape is None:
            return rows
        if rows.shape == self.input_shape:
            return rows.reshape((1, *self.input_shape))
        if rows.ndim == len(self.input_shape) + 1 and rows.shape[1:] == self.input_shape:
            if rows.shape[0] == 0:
                raise InvalidInput("the input has 0 rows; send at least one sample")
            return rows
        raise InvalidInput(
            f"input shape {list(rows.shape)} does not match the model's "
            f"[-1, {', '.join(map(str, self.input_shape))}] (a batch of samples of shape "
            f"{list(self.input_shape)})"
        )

    def admit(self, deadline_s: float) -> None:
        """Refuse at once (``Overloaded``) when the deadline cannot be met by queueing."""
        if self._closed:
            raise EngineClosed(f"model {self.name!r} v{self.version} is shutting down", 1.0)
        if not self.ready:
            raise ModelNotReady(f"model {self.name!r} v{self.version} is not ready yet")
        wait_s = self._batcher.estimated_wait_s()
        left_s = deadline_s - time.monotonic()
        if wait_s > left_s:
            raise DeadlineUnmeetable(
                f"model {self.name!r} cannot answer within the deadline "
                f"(estimated wait {wait_s * 1000:.0f} ms, {max(left_s, 0) * 1000:.0f} ms left)",
                retry_after_s=max(wait_s, 0.001),
            )

    async def infer(self, rows: np.ndarray, deadline_s: float) -> Any:
        """Queue checked rows and await their outputs (one part per request)."""
        self.admit(deadline_s)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._batcher.submit(Pending(rows, deadline_s, future, loop))
        return await future

    def infer_sync(self, rows: np.ndarray, timeout_s: float = 30.0) -> Any:
        """Blocking variant of ``infer`` for callers without an event loop."""
        deadline_s = time.monotonic() + timeout_s
        self.admit(deadline_s)
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._batcher.submit(Pending(rows, deadline_s, future, None))
        return future.result(timeout_s)

    def close(self, timeout_s: float | None = None) -> bool:
        """Stop accepting, finish what is queued, stop the thread; True if fully drained."""
        self._closed = True
        return self._batcher.close(timeout_s)


def _describe_outputs(out: Any) -> list[TensorInfo]:
    from kilowatt.serve.handler import oip_dtype

    if isinstance(out, dict):
        items = list(out.items())
    elif isinstance(out, tuple | list):
        items = [(f"output{i}", value) for i, value in enumerate(out)]
    else:
        items = [("output0", out)]
    infos = []
    for key, value in items:
        array = np.asarray(value)
        infos.append(TensorInfo(str(key), oip_dtype(array.dtype), (-1, *array.shape[1:])))
    return infos
