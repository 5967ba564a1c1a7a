"""The run API: ``start_run`` and ``ActiveRun``, plus ``register_model`` and ``lineage``.

Metric logging is buffered: ``log_metrics`` appends to an in-memory queue (microseconds per
call) and a background thread writes the queue in one transaction every
``flush_interval_s`` (default 1 s), or sooner when ``batch_points`` points are waiting.
The queue is also written on ``flush()``, on leaving the ``with`` block and at interpreter
exit (a run still open then ends ``finished``, or ``failed`` after an uncaught exception).

Crash window: if the process is killed (SIGKILL, OOM killer, power loss), the points logged
since the last completed flush are lost: at most ``flush_interval_s`` seconds of logging
plus the batch being written. Committed points are never corrupted (each batch is one
transaction; SQLite in WAL mode, or PostgreSQL), and the run stays ``running``.
"""

from __future__ import annotations

import atexit
import os
import socket
import sys
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from kilowatt.errors import NotFound, SpecError, StoreError
from kilowatt.spec.settings import Settings
from kilowatt.store.environment import capture_environment
from kilowatt.store.metrics import MetricPoint
from kilowatt.store.records import Artifact, Dataset, LineageGraph, ModelVersion, Run, RunStatus
from kilowatt.store.store import Store, open_store

__all__ = ["ActiveRun", "lineage", "register_model", "start_run"]

DEFAULT_FLUSH_INTERVAL_S = 1.0
DEFAULT_BATCH_POINTS = 20_000
_LIVE_RUNS: weakref.WeakSet[ActiveRun] = weakref.WeakSet()
# How the program is ending, for runs still open at exit: set by the excepthook below.
_EXIT_STATUS: dict[str, RunStatus] = {"status": "finished"}
_hook_installed = threading.Lock()


def _default_writer() -> str:
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _as_float(key: str, value: Any) -> float:
    if isinstance(value, str | bytes):
        raise SpecError(f"metric {key!r} got text {value!r}; log a number")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise SpecError(f"metric {key!r} got {value!r}, which is not a number") from None


class ActiveRun:
    """A run being logged to; use it as a context manager (see ``start_run``).

    Thread-safe: several threads may log to one ``ActiveRun``.
    """

    def __init__(
        self,
        store: Store,
        run: Run,
        *,
        owner: bool,
        writer: str | None = None,
        flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
        batch_points: int = DEFAULT_BATCH_POINTS,
        close_store: bool = False,
    ) -> None:
        if flush_interval_s <= 0:
            raise SpecError(f"flush_interval_s={flush_interval_s} must be positive")
        self.store = store
        self.id = run.id
        self.writer = writer or _default_writer()
        self._owner, self._close_store = owner, close_store
        self._flush_interval_s, self._batch_points = flush_interval_s, batch_points
        self._buffer: deque[MetricPoint] = deque()
        self._next_step: dict[str, int] = {}
        self._flush_lock = threading.Lock()
        self._wake, self._stopping = threading.Event(), threading.Event()
        self._error: BaseException | None = None
        self._ended = False
        self._thread = threading.Thread(target=self._flush_loop, name=f"kw-flush-{run.id[:8]}")
        self._thread.daemon = True  # atexit (below) flushes what is left
        self._thread.start()
        _LIVE_RUNS.add(self)
        _install_exit_status_hook()

    @property
    def info(self) -> Run:
        """The run as stored now (status, params, tags, environment, usage)."""
        return self.store.get_run(self.id)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Queue metric values at ``step`` (default: one past this key's last step).

        Values are numbers (Python, numpy or 0-d tensors); NaN and inf are kept as logged.

        Raises:
            SpecError: a value is not a number (nothing of the call is logged), or the run
                was ended.
        """
        if self._ended:
            raise SpecError(f"run {self.id} has ended; start or attach a run to log more")
        now = time.time()
        values = [(key, _as_float(key, value)) for key, value in metrics.items()]  # all or none
        append, next_step = self._buffer.append, self._next_step
        for key, value in values:
            point_step = next_step.get(key, 0) if step is None else int(step)
            next_step[key] = point_step + 1
            append((key, point_step, now, value))
        if len(self._buffer) >= self._batch_points:
            self._wake.set()

    def log_metric(self, key: str, value: Any, step: int | None = None) -> None:
        """Queue one metric value (see ``log_metrics``)."""
        self.log_metrics({key: value}, step)

    def flush(self) -> None:
        """Write every queued point now.

        Raises:
            StoreError: the store refused the points (they stay queued for a retry).
        """
        self._flush_once()
        if self._error is not None:
            error, self._error = self._error, None
            raise StoreError(f"could not write metrics of run {self.id}: {error}") from error

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Record parameters (fixed once logged)."""
        self.store.log_params(self.id, params)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set tags (may change)."""
        self.store.set_tags(self.id, tags)

    def log_artifact(self, path: str | Path, name: str | None = None) -> Artifact:
        """Store a file on the run, content-addressed by SHA-256."""
        return self.store.log_artifact(self.id, path, name)

    def log_artifacts(self, folder: str | Path, prefix: str = "") -> list[Artifact]:
        """Store every file under a folder."""
        return self.store.log_artifacts(self.id, folder, prefix)

    def log_dataset(
        self,
        name: str,
        *,
        version: str,
        fingerprint: str,
        role: Literal["input", "output"] = "input",
        **details: Any,
    ) -> Dataset:
        """Record a dataset this run read (``role="input"``) or wrote (``"output"``).

        ``details``: ``source_url``, ``size_bytes``, ``num_rows``, ``schema``.
        """
        return self.store.log_dataset(
            name, version=version, fingerprint=fingerprint, run_id=self.id, role=role, **details
        )

    def log_usage(
        self,
        *,
        time_s: float | None = None,
        energy_j: float | None = None,
        cost_usd: float | None = None,
        carbon_gco2e: float | None = None,
        method: str | None = None,
    ) -> None:
        """Record the run's time, energy, cost and carbon and how energy was obtained."""
        self.store.set_run_usage(
            self.id,
            time_s=time_s,
            energy_j=energy_j,
            cost_usd=cost_usd,
            carbon_gco2e=carbon_gco2e,
            method=method,
        )

    def end(self, status: RunStatus = "finished") -> None:
        """Flush, stop the flusher and (if this process started the run) finish it."""
        if self._ended:
            return
        self._ended = True
        self._stopping.set()
        self._wake.set()
        self._thread.join()
        try:
            self.flush()
        finally:
            if self._owner:
                self.store.finish_run(self.id, status)
            _LIVE_RUNS.discard(self)
            if self._close_store:
                self.store.close()

    def __enter__(self) -> ActiveRun:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            status: RunStatus = "finished"
        elif issubclass(exc_type, KeyboardInterrupt):
            status = "killed"
        else:
            status = "failed"
        self.end(status)

    def _flush_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self._flush_interval_s)
            self._wake.clear()
            self._flush_once()

    def _flush_once(self) -> None:
        # One flush at a time, so batches reach the database in the order they were logged.
        with self._flush_lock:
            count = len(self._buffer)
            if count == 0:
                return
            batch = [self._buffer.popleft() for _ in range(count)]
            try:
                self.store.log_metric_points(self.id, self.writer, batch)
            except Exception as error:  # keep the points; retrying is safe (idempotent rows)
                self._buffer.extendleft(reversed(batch))
                self._error = error


def _install_exit_status_hook() -> None:
    """Note an uncaught exception, so runs still open at exit end as failed (or killed)."""
    if not _hook_installed.acquire(blocking=False):
        return  # installed already
    previous = sys.excepthook

    def hook(exc_type: type[BaseException], exc: BaseException, traceback: Any) -> None:
        failed = not issubclass(exc_type, KeyboardInterrupt)
        _EXIT_STATUS["status"] = "failed" if failed else "killed"
        previous(exc_type, exc, traceback)

    sys.excepthook = hook


@atexit.register
def _flush_live_runs() -> None:
    for run in list(_LIVE_RUNS):
        try:
            run.end(_EXIT_STATUS["status"])
        except Exception as error:  # exit must go on; say what was lost
            print(f"kilowatt: could not save run {run.id} at exit: {error}")


def start_run(
    project: str = "default",
    *,
    name: str | None = None,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
    run_id: str | None = None,
    settings: Settings | None = None,
    store: Store | None = None,
    writer: str | None = None,
    flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
) -> ActiveRun:
    """Start a run, or attach to an existing one with ``run_id`` (e.g. from another rank).

    Only the process that started a run finishes it: on leaving the ``with`` block its
    status becomes ``finished``, ``failed`` (an exception) or ``killed`` (Ctrl-C).
    Attached writers flush their points and leave the status alone.

    >>> import kilowatt
    >>> with kilowatt.start_run(project="demo", params={"lr": 3e-4}) as run:  # doctest: +SKIP
    ...     for step in range(100):
    ...         run.log_metrics({"loss": 1 / (step + 1)}, step=step)
    """
    own_store = store is None
    store = store or open_store(settings)
    try:
        if run_id is not None:
            run = store.get_run(run_id)
        else:
            run = store.create_run(
                project, name=name, params=params, tags=tags, environment=capture_environment()
            )
    except BaseException:
        if own_store:
            store.close()
        raise
    return ActiveRun(
        store,
        run,
        owner=run_id is None,
        writer=writer,
        flush_interval_s=flush_interval_s,
        close_store=own_store,
    )


def register_model(
    name: str,
    *,
    run: ActiveRun | Run | str,
    artifact: str | Path,
    signature: Mapping[str, Any] | None = None,
    aliases: Iterable[str] = (),
    settings: Settings | None = None,
) -> ModelVersion:
    """Register ``artifact`` of ``run`` as the next version of model ``name``.

    ``artifact`` is the name of an artifact logged on the run, or a local file, which is
    logged first. Lineage records run -> model version. The arguments are those of
    ``Store.register_model``, in the same order, with a run object or id for ``run``.

    >>> version = kilowatt.register_model("digits", run=run, artifact="model.pt")  # doctest: +SKIP
    """
    if isinstance(run, ActiveRun):
        return _register(run.store, name, run.id, artifact, signature, aliases)
    run_id = run.id if isinstance(run, Run) else run
    with open_store(settings) as store:
        return _register(store, name, run_id, artifact, signature, aliases)


def _register(
    store: Store,
    name: str,
    run_id: str,
    artifact: str | Path,
    signature: Mapping[str, Any] | None,
    aliases: Iterable[str],
) -> ModelVersion:
    artifact_name = str(artifact)
    try:
        store.get_artifact(run_id, artifact_name)
    except NotFound:
        if not Path(artifact).is_file():
            raise
        artifact_name = store.log_artifact(run_id, artifact).name
    return store.register_model(
        name, run_id=run_id, artifact=artifact_name, signature=signature, aliases=aliases
    )


def lineage(model_version: ModelVersion | str, *, settings: Settings | None = None) -> LineageGraph:
    """The lineage graph around a model version (``ModelVersion``, ``name:3``, ``name@alias``)."""
    with open_store(settings) as store:
        if isinstance(model_version, str):
            model_version = store.get_model_version(model_version)
        return store.lineage_of(model_version)
