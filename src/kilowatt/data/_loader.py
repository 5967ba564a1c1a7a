"""The streaming loader: a torch ``IterableDataset`` over a data set version's shards and
``Loader``, which runs it in DataLoader workers and can stop and resume mid-epoch.

    >>> from kilowatt.data import Loader, Storage
    >>> loader = Loader("digits:v1", Storage("/tmp/kw-data"), batch_size=32)  # doctest: +SKIP
    >>> for batch in loader:  # one epoch of {column: tensor} batches  # doctest: +SKIP
    ...     state = loader.state_dict()  # where the next batch comes from

Each worker reads its shards (``_order``) through the shard cache (``_cache``), fetching
the next ``prefetch_shards`` in background threads, applies ``map`` and ``filter`` to
samples and ``collate`` to batches, and tags every batch with how many samples of its
stream it has consumed. The loader records the tag of each batch it hands out, so its
state is exactly what the consumer has seen, not what workers have read ahead.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from kilowatt.data._cache import AccessPlan, CacheStats, Policy, ShardCache
from kilowatt.data._dataset import DataSetVersion, open_dataset
from kilowatt.data._manifest import decode_shard
from kilowatt.data._order import Order
from kilowatt.data._sources import table_to_arrays
from kilowatt.data._storage import Storage, is_local_url
from kilowatt.errors import DataError

__all__ = [
    "Loader",
    "LoaderOptions",
    "LoaderStats",
    "ShardStream",
    "default_collate",
    "prefetch_batches",
]

Sample = dict[str, Any]

#: Stored bytes of batches a worker process may hold ready for the consumer.
PREFETCH_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class LoaderOptions:
    """How to read: batches, order, workers, transforms and cache bounds.

    ``map``, ``filter`` and ``collate`` run in the worker processes and must pickle
    (module-level functions) when ``num_workers > 0``.
    """

    batch_size: int = 32
    shuffle: bool = True
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    num_workers: int = 0
    shuffle_window: int = 2
    prefetch_shards: int = 2
    #: Concurrent shard downloads per process; raise it where one connection cannot fill
    #: the link (remote object stores far away).
    fetch_threads: int = 2
    map: Callable[[Sample], Sample] | None = None
    filter: Callable[[Sample], bool] | None = None
    collate: Callable[[list[Sample]], Any] | None = None
    cache_dir: Path | None = None
    disk_cache_bytes: int = 0
    memory_cache_bytes: int = 256 * 1024 * 1024
    cache_policy: Policy = "belady"
    cache_aware_order: bool = False
    #: ``(inputs, targets)`` columns: batches become ``(batch[inputs], batch[targets])``.
    pair: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        for name in ("batch_size", "world_size", "shuffle_window", "fetch_threads"):
            if getattr(self, name) < 1:
                raise DataError(f"{name}={getattr(self, name)} must be at least 1")
        if not 0 <= self.rank < self.world_size:
            raise DataError(f"rank {self.rank} is outside 0..{self.world_size - 1}")
        if self.num_workers < 0 or self.prefetch_shards < 0:
            raise DataError("num_workers and prefetch_shards cannot be negative")


@dataclass
class LoaderStats:
    """The cache's figures summed over workers, and the consumer's wait for batches."""

    cache: CacheStats = field(default_factory=CacheStats)
    wait_s: float = 0.0
    batches: int = 0
    samples: int = 0

    def metrics(self) -> dict[str, float]:
        """Run metrics: bytes and hit rate per tier, fetch latency, data wait time."""
        c = self.cache
        return {
            "data_memory_bytes": float(c.memory_bytes),
            "data_disk_bytes": float(c.disk_bytes),
            "data_remote_bytes": float(c.remote_bytes),
            "data_memory_hit_rate": c.hit_rate("memory"),
            "data_disk_hit_rate": c.hit_rate("disk"),
            "data_fetch_latency_s": c.fetch_s / c.remote_fetches if c.remote_fetches else 0.0,
            "data_corrupt_refetches": float(c.corrupt_refetches),
            "data_wait_s": self.wait_s,
        }


def default_collate(columns: Mapping[str, Any]) -> dict[str, Any]:
    """``{column: tensor}`` for numeric columns; other columns stay lists."""
    out: dict[str, Any] = {}
    for name, values in columns.items():
        if isinstance(values, np.ndarray) and values.dtype.kind in "biuf":
            out[name] = torch.from_numpy(np.ascontiguousarray(values))
        else:
            out[name] = list(values)
    return out


class ShardStream(IterableDataset[tuple[int, int, dict[str, Any], Any]]):
    """One epoch of one rank as ``(worker, position, cache stats, batch)`` items.

    ``start`` maps a worker to the samples of its stream already consumed (to resume).
    """

    def __init__(
        self, version: DataSetVersion, options: LoaderOptions, epoch: int, start: dict[int, int]
    ) -> None:
        self.version, self.options, self.epoch, self.start = version, options, epoch, start
        # Set by ``share``: the epoch and starts in shared memory, for persistent workers.
        self._shared: Any = None
        # Made on first read in the process that reads (each worker has its own), then kept
        # across epochs: its memory tier and its figures outlive an epoch.
        self._cache: ShardCache | None = None
        #: Batches leave default collation to the consumer (set by Loader for its workers):
        #: numeric columns then cross the worker's pipe as NumPy arrays, in the message,
        #: where a tensor would cost a shared-memory file and a descriptor passed per batch.
        self.collate_in_consumer = False

    def cache(self) -> ShardCache:
        """This process's shard cache."""
        if self._cache is None:
            self._cache = _make_cache(self.options)
        return self._cache

    def share(self, context: Any) -> None:
        """Keep the epoch and starts in shared memory made with multiprocessing ``context``,
        so workers that outlive an epoch read each new one's (see ``retarget``)."""
        self._shared = context.Array("q", 1 + max(1, self.options.num_workers), lock=False)
        self.retarget(self.epoch, self.start)

    def retarget(self, epoch: int, start: dict[int, int]) -> None:
        """Read ``epoch`` from ``start`` on the next iteration, in this and shared copies."""
        self.epoch, self.start = epoch, dict(start)
        if self._shared is not None:
            self._shared[0] = epoch
            for worker in range(1, len(self._shared)):
                self._shared[worker] = start.get(worker - 1, 0)

    def order(self) -> Order:
        o = self.options
        cached = 0
        if o.cache_aware_order and o.disk_cache_bytes > 0:
            largest = max(s.bytes for s in self.version.manifest.shards)
            cached = o.disk_cache_bytes // largest
        return Order(
            num_shards=len(self.version.manifest.shards),
            seed=o.seed,
            shuffle=o.shuffle,
            rank=o.rank,
            world_size=o.world_size,
            num_workers=max(1, o.num_workers),
            shuffle_window=o.shuffle_window,
            cache_aware_shards=cached,
        )

    def __iter__(self) -> Iterator[tuple[int, int, dict[str, Any], Any]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        if self._shared is not None:  # a persistent worker: the main process set the epoch
            self.epoch = int(self._shared[0])
            self.start = {w: int(n) for w, n in enumerate(self._shared[1:])}
        reader = _WorkerReader(self, worker)
        try:
            yield from reader.batches(self.start.get(worker, 0))
        finally:
            reader.close()


class _WorkerReader:
    """Reads one worker's windows through the cache, prefetching, and makes batches."""

    def __init__(self, stream: ShardStream, worker: int) -> None:
        self.stream, self.worker = stream, worker
        self.options, self.version = stream.options, stream.version
        self.order = stream.order()
        self.plan_times = _plan_times(self.order, stream.epoch, self.version)
        self.work = self.order.worker(stream.epoch, worker)
        self.mine = self.work.shards
        self.cache = stream.cache()
        self.cache.set_plan(AccessPlan([(t, sha) for t, sha, _ in self.plan_times]))
        self.my_times = [t for t, _, w in self.plan_times if w == (stream.epoch, worker)]
        self.pool = ThreadPoolExecutor(self.options.fetch_threads, "kilowatt-prefetch")
        self.pending: dict[int, Future[bytes]] = {}
        # One filesystem (and S3 client) for the prefetch threads: made here, before they
        # start, so they do not each build one; fsspec keeps it for this process.
        self.version.storage.filesystem(self.version.url)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def batches(self, skip: int) -> Iterator[tuple[int, int, dict[str, Any], Any]]:
        batcher = _Batcher(self.options, collate=not self.stream.collate_in_consumer)
        consumed, index = 0, 0
        for window_index, window in enumerate(self.work.windows):
            rows = sum(self.version.manifest.shards[s].rows for s in window)
            if consumed + rows <= skip:  # resumed past this window: do not even fetch it
                consumed, index = consumed + rows, index + len(window)
                continue
            columns = self._window_columns(index, len(window))
            order = self.order.rows(self.stream.epoch, self.worker, window_index, rows)
            first = max(0, skip - consumed)
            for batch, used in batcher.feed(columns, order[first:]):
                yield (
                    self.worker,
                    consumed + first + used,
                    self.cache.stats.as_dict(),
                    batch,
                )
            consumed, index = consumed + rows, index + len(window)
        last = batcher.flush()
        if last is not None:
            yield self.worker, consumed, self.cache.stats.as_dict(), last

    def _window_columns(self, index: int, count: int) -> dict[str, Any]:
        # The window's shards and the next ``prefetch_shards`` are queued in the order they
        # are read, for ``fetch_threads`` threads: downloads never pause while there is room
        # ahead, and the shards waited on now do not share the link with those read later.
        for shard in range(index, index + count + self.options.prefetch_shards):
            self._submit(shard)
        data = [self.pending.pop(shard).result() for shard in range(index, index + count)]
        tables = [self._decode(index + k, blob) for k, blob in enumerate(data)]
        return table_to_arrays(pa.concat_tables(tables))

    def _decode(self, index: int, data: bytes) -> pa.Table:
        shard = self.version.manifest.shards[self.mine[index]]
        return decode_shard(data, self.version.shard_url(shard))

    def _submit(self, index: int) -> None:
        if index >= len(self.mine) or index in self.pending:
            return
        shard = self.version.manifest.shards[self.mine[index]]
        url = self.version.shard_url(shard)
        storage = self.version.storage
        self.pending[index] = self.pool.submit(
            self.cache.get,
            shard.sha256,
            lambda: storage.read_bytes(url, shard.bytes),
            self.my_times[index],
            keep_on_disk=not is_local_url(self.version.url),
        )


class _Batcher:
    """Turns window columns and a row order into batches, carrying leftovers across windows.

    Without ``map``/``filter``/``collate`` whole batches are gathered column-wise; with
    them samples go one by one through the user's functions.
    """

    def __init__(self, options: LoaderOptions, collate: bool = True) -> None:
        self.options = options
        self.collate = collate
        self.per_sample = (
            options.map is not None or options.filter is not None or (options.collate is not None)
        )
        self.samples: list[Sample] = []
        self.pieces: list[dict[str, Any]] = []
        self.piece_rows = 0

    def feed(self, columns: dict[str, Any], order: np.ndarray) -> Iterator[tuple[Any, int]]:
        """Yields ``(batch, rows of order consumed through this batch)``."""
        size = self.options.batch_size
        if self.per_sample:
            o = self.options
            for used, row in enumerate(order, start=1):
                sample = {name: values[row] for name, values in columns.items()}
                if o.map is not None:
                    sample = o.map(sample)
                if o.filter is not None and not o.filter(sample):
                    continue
                self.samples.append(sample)
                if len(self.samples) == size:
                    yield self._collate_samples(), used
            return
        start = 0
        while start < len(order):
            take = min(size - self.piece_rows, len(order) - start)
            picked = order[start : start + take]
            self.pieces.append({n: _take(v, picked) for n, v in columns.items()})
            self.piece_rows += take
            start += take
            if self.piece_rows == size:
                yield self._collate_pieces(), start

    def flush(self) -> Any:
        if self.per_sample:
            return self._collate_samples() if self.samples else None
        return self._collate_pieces() if self.piece_rows else None

    def _collate_samples(self) -> Any:
        samples, self.samples = self.samples, []
        if self.options.collate is not None:
            return self.options.collate(samples)
        names = samples[0].keys()
        return self._finish({n: _stack([s[n] for s in samples]) for n in names})

    def _collate_pieces(self) -> Any:
        pieces, self.pieces, self.piece_rows = self.pieces, [], 0
        names = pieces[0].keys()
        return self._finish({n: _concat([p[n] for p in pieces]) for n in names})

    def _finish(self, columns: dict[str, Any]) -> Any:
        return default_collate(columns) if self.collate else columns


class Loader:
    """Batches of a data set version for one rank, resumable mid-epoch.

    Args:
        dataset: ``NAME:VERSION`` (under ``storage``'s root), a URL, or an opened version.
        storage: where data sets live and how to reach them.
        options: batches, order, workers, transforms, cache; keyword overrides replace fields.

    Iterating gives one epoch from the current position; ``state_dict()`` is the position
    after the last batch handed out, and ``load_state_dict`` resumes from it.
    """

    def __init__(
        self,
        dataset: str | DataSetVersion,
        storage: Storage | None = None,
        options: LoaderOptions | None = None,
        **overrides: Any,
    ) -> None:
        if isinstance(dataset, str):
            if storage is None:
                raise DataError(f"Loader({dataset!r}) needs storage= to find the data set")
            dataset = open_dataset(dataset, storage)
        self.version = dataset
        self.options = dataclasses.replace(options or LoaderOptions(), **overrides)
        _check_quota(self.options, self.version)
        self.epoch = 0
        self._positions: dict[int, int] = {}
        self._worker_stats: dict[int, CacheStats] = {}
        self.stats = LoaderStats()
        self._dataloader: DataLoader[Any] | None = None
        self._stream: ShardStream | None = None

    def for_rank(self, batch_size: int, rank: int, world_size: int, seed: int) -> Loader:
        """A copy reading ``rank``'s share in batches of ``batch_size`` (for the Trainer);
        it adds its figures to this loader's ``stats``."""
        options = dataclasses.replace(
            self.options, batch_size=batch_size, rank=rank, world_size=world_size, seed=seed
        )
        copy = Loader(self.version, options=options)
        copy.stats = self.stats
        return copy

    def set_epoch(self, epoch: int) -> None:
        """Read ``epoch`` next; a different epoch than the saved one starts at its beginning."""
        if epoch != self.epoch:
            self.epoch, self._positions = epoch, {}

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "positions": dict(self._positions),
            "num_workers": self.options.num_workers,
            "fingerprint": self.version.fingerprint,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["fingerprint"] != self.version.fingerprint:
            raise DataError(
                f"the saved loader position is for data set fingerprint "
                f"{state['fingerprint'][:16]}, not {self.version.fingerprint[:16]}; resume "
                "with the data set version the run started with"
            )
        if state["num_workers"] != self.options.num_workers:
            raise DataError(
                f"the saved loader position was taken with num_workers={state['num_workers']}; "
                f"resume with the same number (not {self.options.num_workers})"
            )
        self.epoch = int(state["epoch"])
        self._positions = {int(k): int(v) for k, v in state["positions"].items()}

    def __iter__(self) -> Iterator[Any]:
        items: Any = self._workers() if self.options.num_workers > 0 else self._one_stream()
        stream = self._one_stream()
        stream.retarget(self.epoch, self._positions)
        collate_here = stream.collate_in_consumer and self.options.collate is None
        iterator = iter(items)
        while True:
            started_s = time.perf_counter()
            try:
                worker, position, stats, batch = next(iterator)
            except StopIteration:
                break
            self.stats.wait_s += time.perf_counter() - started_s
            self._positions[worker] = position
            self._worker_stats[worker] = CacheStats(**stats)
            self._sum_stats()
            self.stats.batches += 1
            self.stats.samples += _batch_len(batch)
            if collate_here:
                batch = default_collate(batch)
            yield batch if self.options.pair is None else _pair(batch, self.options.pair)
        self.epoch, self._positions = self.epoch + 1, {}

    def _one_stream(self) -> ShardStream:
        """The stream read in this process, kept across epochs with its cache."""
        if self._stream is None:
            self._stream = ShardStream(self.version, self.options, self.epoch, {})
        return self._stream

    def _workers(self) -> DataLoader[Any]:
        """The DataLoader whose worker processes (and their S3 clients, connection pools,
        shard caches and imports) persist across epochs; made on first use, ended with
        this loader."""
        if self._dataloader is None:
            context = multiprocessing.get_context("fork" if os.name == "posix" else None)
            stream = self._one_stream()
            stream.share(context)
            stream.collate_in_consumer = True
            self._dataloader = DataLoader(
                stream,
                batch_size=None,
                num_workers=self.options.num_workers,
                multiprocessing_context=context,
                persistent_workers=True,
                prefetch_factor=prefetch_batches(self._row_bytes(), self.options.batch_size),
                collate_fn=_as_is,  # not DataLoader's default_convert: batches stay NumPy
            )
        return self._dataloader

    def _row_bytes(self) -> float:
        manifest = self.version.manifest
        return manifest.bytes / max(1, manifest.rows)

    def _sum_stats(self) -> None:
        total = CacheStats()
        for stats in self._worker_stats.values():
            total.add(stats)
        self.stats.cache = total


def _as_is(item: Any) -> Any:
    return item


def prefetch_batches(row_bytes: float, batch_size: int) -> int:
    """Batches each worker may have ready ahead of the consumer: about ``PREFETCH_BYTES``
    of stored rows, from 2 (DataLoader's default) to 64. A worker held to 2 waits on the
    consumer for every batch; one that runs ahead keeps downloading and decoding while
    the consumer is busy."""
    return int(min(64, max(2, PREFETCH_BYTES // max(1.0, batch_size * row_bytes))))


def _make_cache(options: LoaderOptions) -> ShardCache:
    directory = options.cache_dir if options.disk_cache_bytes > 0 else None
    return ShardCache(
        directory, options.disk_cache_bytes, options.memory_cache_bytes, options.cache_policy
    )


def _check_quota(options: LoaderOptions, version: DataSetVersion) -> None:
    if options.disk_cache_bytes <= 0:
        return
    if options.cache_dir is None:
        raise DataError("disk_cache_bytes is set but cache_dir is not; give the cache folder")
    largest = max(s.bytes for s in version.manifest.shards)
    if options.disk_cache_bytes < largest:
        raise DataError(
            f"the disk cache quota of {options.disk_cache_bytes} bytes is smaller than one shard "
            f"of {version.manifest.name}:{version.manifest.version} ({largest} bytes); raise "
            "the quota or create the data set with smaller shards (--shard-mb)"
        )


def _plan_times(
    order: Order, epoch: int, version: DataSetVersion
) -> list[tuple[float, str, tuple[int, int]]]:
    """``(time, sha256, (epoch, worker))`` of every read of this rank in this epoch and the
    next; a worker's k-th of n shards is read at ``epoch + (k + 0.5) / n``, since workers
    progress side by side."""
    shards = version.manifest.shards
    times = []
    for e in (epoch, epoch + 1):
        for worker in range(order.num_workers):
            mine = order.worker(e, worker).shards
            for k, shard in enumerate(mine):
                times.append((e + (k + 0.5) / len(mine), shards[shard].sha256, (e, worker)))
    return times


def _take(values: Any, rows: np.ndarray) -> Any:
    return values[rows]


def _concat(parts: list[Any]) -> Any:
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _stack(values: list[Any]) -> Any:
    first = values[0]
    if isinstance(first, np.ndarray | np.generic | int | float):
        return np.asarray(values)
    return values


def _pair(batch: Any, columns: tuple[str, str]) -> tuple[Any, Any]:
    try:
        return batch[columns[0]], batch[columns[1]]
    except (KeyError, TypeError):
        names = list(batch) if isinstance(batch, Mapping) else type(batch).__name__
        raise DataError(
            f"batches have columns {names}, not inputs {columns[0]!r} and targets "
            f"{columns[1]!r}; name two of its columns"
        ) from None


def _batch_len(batch: Any) -> int:
    if isinstance(batch, Mapping) and batch:
        first = next(iter(batch.values()))
        return len(first)
    return len(batch) if hasattr(batch, "__len__") else 1
