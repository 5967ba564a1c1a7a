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
from kilowatt.serve.handler import ModelHandler, numpy_dtype, oip_dtype
from kilowatt.serve.protocol import Tensors
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
        #: The model's inputs (one sample's shape each); several only for multi-input models.
        self.inputs: list[TensorInfo] = []
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
        self._describe_inputs()
        self._warm_up()
        self._batcher.start()
        self.ready = True

    def _describe_inputs(self) -> None:
        declared = getattr(self.handler, "inputs", None)
        if declared:
            self.inputs = [TensorInfo(i.name, i.datatype.upper(), tuple(i.shape)) for i in declared]
            for info in self.inputs:
                numpy_dtype(info.datatype)  # an unknown datatype fails the load, not a request
            self.input_shape = self.inputs[0].shape if len(self.inputs) == 1 else None
            self.input_dtype = numpy_dtype(self.inputs[0].datatype)
            return
        shape = getattr(self.handler, "input_shape", None)
        self.input_shape = tuple(shape) if shape is not None else None
        self.input_dtype = numpy_dtype(getattr(self.handler, "input_dtype", "FP32") or "FP32")
        dtype_name = oip_dtype(self.input_dtype)
        self.inputs = [TensorInfo("input0", dtype_name, self.input_shape or ())]

    @property
    def multi_input(self) -> bool:
        """Whether the model takes several named tensors (``predict`` gets a dict)."""
        return len(self.inputs) > 1

    def input_dtypes(self) -> dict[str, np.dtype[Any]]:
        """The NumPy dtype of each input by name."""
        return {info.name: numpy_dtype(info.datatype) for info in self.inputs}

    def _warm_up(self) -> None:
        # The first passes pay for allocation and kernel selection; pay them before ready.
        if not self.multi_input and self.input_shape is None:
            return
        for count in sorted({1, self.batching.max_batch_size}):
            if self.multi_input:
                sample: Any = {
                    i.name: np.zeros((count, *i.shape), dtype=numpy_dtype(i.datatype))
                    for i in self.inputs
                }
            else:
                sample = np.zeros((count, *self.input_shape), dtype=self.input_dtype)  # type: ignore[misc]
            out = self.handler.predict(sample)
        self.outputs = _describe_outputs(out)

    def check_rows(self, rows: Tensors) -> Tensors:
        """Validate a request's tensor(s) against the model inputs; returns them with a
        batch axis (a dict in input order for a model with several inputs).

        Raises:
            InvalidInput: wrong names, shape or datatype, with the expected ones in the message.
        """
        if not self.multi_input:
            if isinstance(rows, dict):
                if len(rows) != 1:
                    raise InvalidInput(
                        f"model {self.name!r} takes one input, got {len(rows)}: {sorted(rows)}"
                    )
                rows = next(iter(rows.values()))  # one input: any name will do
            return _check_tensor(rows, self.input_dtype, self.input_shape, None)
        names = [info.name for info in self.inputs]
        if not isinstance(rows, dict) or set(rows) != set(names):
            sent = sorted(rows) if isinstance(rows, dict) else "one unnamed tensor"
            raise InvalidInput(
                f"model {self.name!r} takes inputs {names}, got {sent}; send one tensor per name"
            )
        checked = {
            i.name: _check_tensor(rows[i.name], numpy_dtype(i.datatype), i.shape, i.name)
            for i in self.inputs
        }
        counts = {name: len(array) for name, array in checked.items()}
        if len(set(counts.values())) != 1:
            raise InvalidInput(f"the inputs hold different numbers of samples: {counts}")
        return checked

    def is_one_sample(self, rows: Tensors) -> bool:
        """Whether a request sent one sample without a batch axis (answered likewise)."""
        if isinstance(rows, dict):
            return all(i.name in rows and rows[i.name].ndim == len(i.shape) for i in self.inputs)
        return self.input_shape is not None and rows.ndim == len(self.input_shape)

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

    async def infer(self, rows: Tensors, deadline_s: float) -> Any:
        """Queue checked rows and await their outputs (one part per request)."""
        self.admit(deadline_s)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._batcher.submit(Pending(rows, deadline_s, future, loop))
        return await future

    def infer_sync(self, rows: Tensors, timeout_s: float = 30.0) -> Any:
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


def _check_tensor(
    rows: np.ndarray, dtype: np.dtype[Any], shape: tuple[int, ...] | None, name: str | None
) -> np.ndarray:
    what = f"input {name!r}" if name is not None else "input"
    if rows.dtype != dtype:
        raise InvalidInput(f"{what} datatype {rows.dtype} does not match the model's {dtype}")
    if shape is None:
        return rows
    if rows.shape == shape:
        return rows.reshape((1, *shape))
    if rows.ndim == len(shape) + 1 and rows.shape[1:] == shape:
        if rows.shape[0] == 0:
            raise InvalidInput(f"{what} has 0 rows; send at least one sample")
        return rows
    raise InvalidInput(
        f"{what} shape {list(rows.shape)} does not match the model's "
        f"[-1, {', '.join(map(str, shape))}] (a batch of samples of shape {list(shape)})"
    )
