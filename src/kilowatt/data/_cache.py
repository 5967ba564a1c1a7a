"""The tiered shard cache: memory (bounded bytes) -> local disk (bounded bytes) -> remote.

Entries are named by the shard's SHA-256, so a new data set version can never be served
another version's bytes. Every read from disk is re-hashed; a mismatch is deleted, counted
and fetched again, never served. Processes on one machine share the disk folder: a file
lock per shard makes one of them download it while the others wait and then read it, and
the download lands under a temporary name renamed into place, so no reader sees a partial
file. The cache only ever deletes its own copies, never the data set's files, so a data
set whose only copy is local is never evicted (it is read in place and not copied).

Eviction knows the future. The loader's epoch order is a pure function of (seed, epoch,
world size, rank, worker), so it hands the cache its access plan, and the cache evicts the
shard whose next use is furthest away (Belady's rule); a newly fetched shard that would be
the furthest is not admitted at all. With equal shard sizes this is the optimal policy.
"""

from __future__ import annotations

import bisect
import fcntl
import hashlib
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from kilowatt.data._manifest import sha256_hex
from kilowatt.errors import DataError

__all__ = ["AccessPlan", "CacheStats", "ShardCache"]

Policy = Literal["belady", "lru"]

#: Bytes hashed and written at a time: small enough to stay in the CPU cache between the
#: two, so checking a download costs no second pass over memory.
_CHUNK_BYTES = 1 << 20


class AccessPlan:
    """When each shard will be read: ``(time, sha256)`` pairs; times only need to order.

    >>> plan = AccessPlan([(0, "a"), (1, "b"), (2, "a")])
    >>> plan.next_use("a", after=0), plan.next_use("b", after=1)
    (2, inf)
    """

    def __init__(self, accesses: Sequence[tuple[float, str]] = ()) -> None:
        self._times: dict[str, list[float]] = {}
        for when, sha in sorted(accesses):
            self._times.setdefault(sha, []).append(when)

    def next_use(self, sha: str, after: float) -> float:
        """The first time strictly after ``after`` that ``sha`` is read (inf: never again)."""
        times = self._times.get(sha)
        if not times:
            return math.inf
        index = bisect.bisect_right(times, after)
        return times[index] if index < len(times) else math.inf


@dataclass
class CacheStats:
    """What the cache did, per tier; summed over DataLoader workers by the loader."""

    memory_hits: int = 0
    memory_bytes: int = 0
    disk_hits: int = 0
    disk_bytes: int = 0
    remote_fetches: int = 0
    remote_bytes: int = 0
    fetch_s: float = 0.0
    corrupt_refetches: int = 0
    evictions: int = 0
    not_admitted: int = 0

    def add(self, other: CacheStats) -> None:
        for name, value in other.as_dict().items():
            setattr(self, name, getattr(self, name) + value)

    def as_dict(self) -> dict[str, float]:
        """The figures as a new dict; a shallow copy, as cheap as the loader needs per
        batch (``dataclasses.asdict`` deep-copies every value)."""
        return dict(vars(self))

    @property
    def reads(self) -> int:
        return self.memory_hits + self.disk_hits + self.remote_fetches

    def hit_rate(self, tier: Literal["memory", "disk"]) -> float:
        """Hits of ``tier`` over the reads that reached it (0.0 before any read)."""
        if tier == "memory":
            return self.memory_hits / self.reads if self.reads else 0.0
        reached = self.disk_hits + self.remote_fetches
        return self.disk_hits / reached if reached else 0.0


@dataclass
class _Memory:
    limit_bytes: int
    entries: dict[str, bytes] = field(default_factory=dict)

    @property
    def used_bytes(self) -> int:
        return sum(len(v) for v in self.entries.values())


class ShardCache:
    """Shards by SHA-256 in memory and in ``directory``, fetched from remote on a miss.

    Args:
        directory: the disk tier, shared by processes on this machine (None: no disk tier).
        disk_bytes: the most the folder may hold when this cache writes to it.
        memory_bytes: the most this process keeps in memory.
        policy: ``belady`` (furthest next use; needs ``set_plan``) or ``lru``.
    """

    def __init__(
        self,
        directory: Path | None,
        disk_bytes: int = 0,
        memory_bytes: int = 0,
        policy: Policy = "belady",
    ) -> None:
        if policy not in ("belady", "lru"):
            raise DataError(f"cache policy {policy!r} is unknown; use 'belady' or 'lru'")
        self.directory = directory
        self.disk_bytes = disk_bytes
        self.memory = _Memory(memory_bytes)
        self.policy: Policy = policy
        self.plan = AccessPlan()
        self.stats = CacheStats()
        self._last_used: dict[str, float] = {}
        # Prefetch threads share this object: the memory tier and counters change under it.
        self._mutex = threading.Lock()
        if directory is not None:
            (directory / ".locks").mkdir(parents=True, exist_ok=True)

    def set_plan(self, plan: AccessPlan) -> None:
        """The accesses to come (this epoch and the next), for Belady's rule."""
        self.plan = plan

    def get(
        self, sha: str, fetch: Callable[[], bytes], at: float, *, keep_on_disk: bool = True
    ) -> bytes:
        """The verified bytes of shard ``sha``, read at plan time ``at``.

        ``fetch`` reads it from where the data set lives; ``keep_on_disk=False`` (data
        whose only copy is local) skips the disk tier: it is read in place, never copied.
        """
        with self._mutex:
            self._last_used[sha] = at
            data = self.memory.entries.get(sha)
        if data is not None:
            self._count(memory_hits=1, memory_bytes=len(data))
            return data
        if self.directory is None or not keep_on_disk or self.disk_bytes <= 0:
            data = self._fetch(sha, fetch)
        else:
            data = self._disk_or_fetch(sha, fetch, at)
        self._remember(sha, data, at)
        return data

    # --- disk tier

    def _disk_or_fetch(self, sha: str, fetch: Callable[[], bytes], at: float) -> bytes:
        data = self._read_disk(sha)
        if data is not None:
            return data
        with self._lock(f"{sha}.lock"):
            data = self._read_disk(sha)  # another process may have fetched it meanwhile
            if data is not None:
                return data
            data = self._download(fetch)
            # One pass over the bytes checks them and, when admitted, writes the copy.
            with self._lock("evict.lock"):
                if self._make_room(sha, len(data), at):
                    self._write_verified(sha, data)
                else:
                    self._verify(sha, data)
        return data

    def _path(self, sha: str) -> Path:
        assert self.directory is not None
        return self.directory / sha[:2] / sha

    def _read_disk(self, sha: str) -> bytes | None:
        try:
            data = self._path(sha).read_bytes()
        except FileNotFoundError:
            return None
        if sha256_hex(data) != sha:
            # A damaged copy (bad disk, a stray write): never serve it, fetch it again.
            self._count(corrupt_refetches=1)
            self._path(sha).unlink(missing_ok=True)
            return None
        self._count(disk_hits=1, disk_bytes=len(data))
        return data

    def _write_verified(self, sha: str, data: bytes) -> None:
        """Write ``data`` under a temporary name, hashing each chunk as it is written, and
        rename it into place only when the hash is ``sha``; otherwise remove it and fail."""
        path = self._path(sha)
        path.parent.mkdir(exist_ok=True)
        temporary = path.with_name(f"{sha}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        digest = hashlib.sha256()
        view = memoryview(data)
        try:
            with open(temporary, "wb") as out:
                for start in range(0, len(view), _CHUNK_BYTES):
                    chunk = view[start : start + _CHUNK_BYTES]
                    digest.update(chunk)
                    out.write(chunk)
            if digest.hexdigest() != sha:
                raise _changed_remote(sha, len(data))
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)

    def _make_room(self, sha: str, size: int, at: float) -> bool:
        """Evict until ``size`` more bytes fit; False if the new shard should not be kept."""
        if size > self.disk_bytes:
            raise DataError(
                f"a shard of {size} bytes does not fit the disk cache quota of "
                f"{self.disk_bytes} bytes; raise the quota above the largest shard"
            )
        entries = self.disk_entries()
        used = sum(entries.values())
        while used + size > self.disk_bytes:
            victim = max(entries, key=lambda other: self._rank(other, at))
            if self._rank(sha, at) >= self._rank(victim, at):
                self._count(not_admitted=1)  # needed later than anything cached: skip it
                return False
            self._path(victim).unlink(missing_ok=True)
            used -= entries.pop(victim)
            self._count(evictions=1)
        return True

    def _rank(self, sha: str, at: float) -> tuple[float, float]:
        """Larger is evicted first: furthest next use (Belady) or least recent use (LRU)."""
        if self.policy == "belady":
            return (self.plan.next_use(sha, at), -self._last_used.get(sha, -math.inf))
        return (-self._last_used.get(sha, -math.inf), 0.0)

    def disk_entries(self) -> dict[str, int]:
        """``{sha256: bytes}`` of every complete shard in the disk tier."""
        if self.directory is None:
            return {}
        found = {}
        for folder in self.directory.iterdir():
            if len(folder.name) != 2 or not folder.is_dir():
                continue
            for path in folder.iterdir():
                if ".tmp-" not in path.name:
                    try:
                        found[path.name] = path.stat().st_size
                    except FileNotFoundError:  # evicted by another process just now
                        continue
        return found

    @contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        assert self.directory is not None
        with open(self.directory / ".locks" / name, "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # --- remote and memory tiers

    def _download(self, fetch: Callable[[], bytes]) -> bytes:
        """``fetch()``, timed and counted as a remote read (not yet verified)."""
        started_s = time.perf_counter()
        data = fetch()
        self._count(
            fetch_s=time.perf_counter() - started_s, remote_fetches=1, remote_bytes=len(data)
        )
        return data

    def _fetch(self, sha: str, fetch: Callable[[], bytes]) -> bytes:
        data = self._download(fetch)
        self._verify(sha, data)
        return data

    @staticmethod
    def _verify(sha: str, data: bytes) -> None:
        if sha256_hex(data) != sha:
            raise _changed_remote(sha, len(data))

    def _count(self, **increments: float) -> None:
        with self._mutex:
            for name, value in increments.items():
                setattr(self.stats, name, getattr(self.stats, name) + value)

    def _remember(self, sha: str, data: bytes, at: float) -> None:
        memory = self.memory
        if len(data) > memory.limit_bytes:
            return
        with self._mutex:
            used = memory.used_bytes
            while used + len(data) > memory.limit_bytes and memory.entries:
                victim = max(memory.entries, key=lambda other: self._rank(other, at))
                used -= len(memory.entries.pop(victim))
            memory.entries[sha] = data


def _changed_remote(sha: str, size: int) -> DataError:
    return DataError(
        f"the stored shard with SHA-256 {sha[:16]} has other content "
        f"({size} bytes); it was changed after creation; run kilowatt data verify"
    )
