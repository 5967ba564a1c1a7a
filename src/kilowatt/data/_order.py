"""The epoch order: a pure function of (seed, epoch, world size, rank, worker).

Shards are dealt to ranks, then to DataLoader workers; each worker reads its shards in
windows of ``shuffle_window`` shards whose rows are shuffled together. Because nothing
depends on timing, the cache can be told the future, and a resumed epoch is cut from
the same order at a saved offset.

Cache-aware order (``cache_aware_shards=k > 0``): ranks keep the shards they got in epoch
0, and from epoch 1 on, each epoch starts with the ``k`` shards the previous epoch read
last (those a cache of ``k`` shards still holds), in a fresh random order, followed by
the rest, also shuffled. What this does to randomness: which shards open an epoch is no
longer independent of the previous epoch (they are the ones it ended with), and a rank
sees the same shard subset every epoch; the order within both groups and the order of
rows inside every window stay uniformly random from the seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Order", "WorkerOrder"]


@dataclass(frozen=True)
class WorkerOrder:
    """One worker's epoch: its shards in order, grouped into shuffle windows."""

    shards: tuple[int, ...]
    windows: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class Order:
    """How to order ``num_shards`` shards for one rank's workers."""

    num_shards: int
    seed: int = 0
    shuffle: bool = True
    rank: int = 0
    world_size: int = 1
    num_workers: int = 1
    shuffle_window: int = 1
    cache_aware_shards: int = 0

    def rank_shards(self, epoch: int) -> list[int]:
        """This rank's shards in the order it reads them in ``epoch``."""
        if not self.shuffle:
            return list(range(self.rank, self.num_shards, self.world_size))
        if self.cache_aware_shards <= 0:
            permutation = _rng(self.seed, epoch).permutation(self.num_shards)
            return [int(s) for s in permutation[self.rank :: self.world_size]]
        order = [int(s) for s in _rng(self.seed, 0).permutation(self.num_shards)]
        order = order[self.rank :: self.world_size]
        for later in range(1, epoch + 1):
            kept = order[len(order) - min(self.cache_aware_shards, len(order)) :]
            rest = order[: len(order) - len(kept)]
            rng = _rng(self.seed, later, self.rank)
            order = [kept[i] for i in rng.permutation(len(kept))]
            order += [rest[i] for i in rng.permutation(len(rest))]
        return order

    def worker(self, epoch: int, worker: int) -> WorkerOrder:
        shards = tuple(self.rank_shards(epoch)[worker :: self.num_workers])
        size = max(1, self.shuffle_window)
        windows = tuple(shards[i : i + size] for i in range(0, len(shards), size))
        return WorkerOrder(shards, windows)

    def rows(self, epoch: int, worker: int, window: int, count: int) -> np.ndarray:
        """The order of the ``count`` rows of one window (indices into its concatenation)."""
        if not self.shuffle:
            return np.arange(count)
        return _rng(self.seed, epoch, self.rank, worker, window, 1).permutation(count)


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in key])
