"""Batches that can resume: deterministic order per epoch, a position, and device moves."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from kilowatt.errors import SpecError

__all__ = ["BatchStream", "LoaderFactory", "eval_batches", "move_to"]

#: ``(batch_size, rank, world_size) -> iterable of batches``; one pass = one epoch.
LoaderFactory = Callable[[int, int, int], Iterable[Any]]


class _SkipSampler(Sampler[int]):
    """The indices of ``base`` after the first ``skip`` (to resume mid-epoch)."""

    def __init__(self, base: DistributedSampler[Any], skip: int) -> None:
        self.base, self.skip = base, skip

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.base), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.base) - self.skip)


class BatchStream:
    """An endless stream of micro-batches that knows its position (epoch, batch in epoch).

    From a map-style dataset it builds, per epoch, a ``DistributedSampler`` (shuffled from
    ``seed`` + epoch, sharded by rank) and a ``DataLoader`` with its own generator, so the
    order never depends on the global RNG and a resumed stream yields exactly what the
    uninterrupted one would. From a loader factory it replays each epoch and skips. A
    resumable loader (``kilowatt.data.Loader``: ``for_rank``, ``state_dict``) keeps its own
    position, which is saved with the stream's and restored without re-reading.
    """

    def __init__(
        self,
        source: Dataset[Any] | LoaderFactory,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        epoch: int = 0,
        batch_in_epoch: int = 0,
    ) -> None:
        self.source, self.batch_size = source, batch_size
        self.rank, self.world_size = rank, world_size
        self.seed, self.shuffle = seed, shuffle
        self.epoch, self.batch_in_epoch = epoch, batch_in_epoch
        self._iterator: Iterator[Any] | None = None
        self._loader = (
            source.for_rank(batch_size, rank, world_size, seed) if _is_resumable(source) else None
        )
        if isinstance(source, Sized):
            per_rank = len(source) // world_size
            if per_rank < batch_size:
                raise SpecError(
                    f"the dataset has {len(source)} samples, fewer than one batch of "
                    f"{batch_size} per worker x {world_size} worker(s); lower batch_size"
                )

    def position(self) -> dict[str, int]:
        """Where the next batch comes from; saved in checkpoints."""
        position: dict[str, Any] = {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}
        if self._loader is not None:
            position["loader"] = self._loader.state_dict()
        return position

    def metrics(self) -> dict[str, float]:
        """The resumable loader's figures (cache tiers, fetch latency, data wait), if any."""
        return self._loader.stats.metrics() if self._loader is not None else {}

    def restore(self, position: dict[str, Any]) -> None:
        """Continue from a saved ``position()``."""
        self.epoch, self.batch_in_epoch = position["epoch"], position["batch_in_epoch"]
        if self._loader is not None and "loader" in position:
            self._loader.load_state_dict(position["loader"])

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> Any:
        for _ in range(2):  # at most one epoch boundary per batch
            if self._iterator is None:
                self._iterator = self._open_epoch()
            try:
                batch = next(self._iterator)
            except StopIteration:
                self._iterator = None
                self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                continue
            self.batch_in_epoch += 1
            return batch
        raise SpecError("the data source yielded no batch in a whole epoch; is it empty?")

    def _open_epoch(self) -> Iterator[Any]:
        if self._loader is not None:
            self._loader.set_epoch(self.epoch)
            return iter(self._loader)
        if _is_factory(self.source):
            loader = self.source(self.batch_size, self.rank, self.world_size)
            return itertools.islice(iter(loader), self.batch_in_epoch, None)
        sampler = DistributedSampler(
            self.source,
            num_replicas=self.world_size,
            rank=self.rank,
            shuffle=self.shuffle,
            seed=self.seed,
            drop_last=True,
        )
        sampler.set_epoch(self.epoch)
        loader = DataLoader(
            self.source,
            batch_size=self.batch_size,
            sampler=_SkipSampler(sampler, self.batch_in_epoch * self.batch_size),
            drop_last=True,  # equal batch shapes on every rank and after a resume
            generator=torch.Generator().manual_seed(self.seed),
        )
        return iter(loader)


def eval_batches(
    source: Dataset[Any] | LoaderFactory, batch_size: int, rank: int, world_size: int
) -> Iterable[Any]:
    """One pass over an evaluation set, sharded by rank, in a fixed order."""
    if _is_factory(source):
        return source(batch_size, rank, world_size)
    sampler = DistributedSampler(source, num_replicas=world_size, rank=rank, shuffle=False)
    return DataLoader(
        source, batch_size=batch_size, sampler=sampler, generator=torch.Generator().manual_seed(0)
    )


def _is_factory(source: Any) -> bool:
    # A map-style dataset indexes; a loader factory is a plain callable.
    return callable(source) and not hasattr(source, "__getitem__")


def _is_resumable(source: Any) -> bool:
    return hasattr(source, "for_rank") and hasattr(source, "state_dict")


def move_to(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor inside (tuples, lists, dicts) moved to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(move_to(v, device) for v in batch)
    return batch
