"""The shard cache: Belady's rule is optimal, verified reads, one download, quota."""

from __future__ import annotations

import functools
import itertools
import multiprocessing
from pathlib import Path

import numpy as np
import pytest

from kilowatt.data import AccessPlan, ShardCache, _cache
from kilowatt.data._manifest import sha256_hex
from kilowatt.errors import DataError

SHARD_BYTES = 1000


def _shards(count: int) -> dict[str, bytes]:
    blobs = [bytes([i]) * SHARD_BYTES for i in range(count)]
    return {sha256_hex(b): b for b in blobs}


def _epoch_trace(shas: list[str], epochs: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [shas[i] for _ in range(epochs) for i in rng.permutation(len(shas))]


def _optimal_hits(trace: list[str], capacity: int) -> int:
    """The most hits any policy can get: exhaustive search over every choice of what to
    keep after each miss (keep it or not, and what to drop), memoised on the cache set."""

    @functools.cache
    def best(t: int, cached: frozenset[str]) -> int:
        if t == len(trace):
            return 0
        item = trace[t]
        if item in cached:
            return 1 + best(t + 1, cached)
        choices = [cached]  # do not keep the new item
        if len(cached) < capacity:
            choices.append(cached | {item})
        else:
            choices += [(cached - {out}) | {item} for out in cached]
        return max(best(t + 1, c) for c in choices)

    return best(0, frozenset())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_belady_hits_equal_the_offline_optimum_on_a_recorded_trace(
    seed: int, tmp_path: Path
) -> None:
    shards = _shards(6)
    trace = _epoch_trace(list(shards), epochs=3, seed=seed)
    cache = ShardCache(tmp_path / f"c{seed}", disk_bytes=3 * SHARD_BYTES, policy="belady")
    cache.set_plan(AccessPlan(list(enumerate(trace))))
    for at, sha in enumerate(trace):
        assert cache.get(sha, lambda sha=sha: shards[sha], at) == shards[sha]
    optimum = _optimal_hits(trace, capacity=3)
    assert cache.stats.disk_hits == optimum
    assert cache.stats.remote_fetches == len(trace) - optimum


def test_lru_does_worse_than_belady_on_cyclic_epochs(tmp_path: Path) -> None:
    # The same order every epoch with half the data cached: LRU always drops what comes next.
    shards = _shards(6)
    trace = list(shards) * 3
    hits = {}
    for policy in ("lru", "belady"):
        cache = ShardCache(tmp_path / policy, disk_bytes=3 * SHARD_BYTES, policy=policy)
        cache.set_plan(AccessPlan(list(enumerate(trace))))
        for at, sha in enumerate(trace):
            cache.get(sha, lambda sha=sha: shards[sha], at)
        hits[policy] = cache.stats.disk_hits
    assert hits == {"lru": 0, "belady": _optimal_hits(trace, 3)}


def test_the_disk_tier_never_exceeds_its_quota(tmp_path: Path) -> None:
    shards = _shards(10)
    trace = _epoch_trace(list(shards), epochs=3, seed=5)
    cache = ShardCache(tmp_path / "c", disk_bytes=int(3.5 * SHARD_BYTES))
    cache.set_plan(AccessPlan(list(enumerate(trace))))
    peak = 0
    for at, sha in enumerate(trace):
        cache.get(sha, lambda sha=sha: shards[sha], at)
        peak = max(peak, sum(cache.disk_entries().values()))
    assert peak == 3 * SHARD_BYTES
    on_disk = sum(
        p.stat().st_size
        for p in (tmp_path / "c").rglob("*")
        if p.parent.name != ".locks" and p.is_file()
    )
    assert on_disk <= 3.5 * SHARD_BYTES


def test_a_quota_smaller_than_a_shard_is_refused(tmp_path: Path) -> None:
    shards = _shards(1)
    cache = ShardCache(tmp_path / "c", disk_bytes=SHARD_BYTES - 1)
    sha = next(iter(shards))
    with pytest.raises(DataError, match=r"shard of 1000 bytes does not fit .* quota of 999"):
        cache.get(sha, lambda: shards[sha], 0)


def test_a_corrupted_cached_shard_is_refetched_and_never_served(tmp_path: Path) -> None:
    shards = _shards(2)
    sha = next(iter(shards))
    fetches = []

    def fetch() -> bytes:
        fetches.append(sha)
        return shards[sha]

    ShardCache(tmp_path / "c", disk_bytes=10 * SHARD_BYTES).get(sha, fetch, 0)
    cached = tmp_path / "c" / sha[:2] / sha
    cached.write_bytes(b"\xee" * SHARD_BYTES)  # same size, other content
    reader = ShardCache(tmp_path / "c", disk_bytes=10 * SHARD_BYTES)
    assert reader.get(sha, fetch, 0) == shards[sha]
    assert reader.stats.corrupt_refetches == 1
    assert len(fetches) == 2
    assert cached.read_bytes() == shards[sha]  # the good copy replaced the bad one


def test_a_remote_shard_with_other_content_is_an_error(tmp_path: Path) -> None:
    sha = sha256_hex(b"expected")
    cache = ShardCache(tmp_path / "c", disk_bytes=SHARD_BYTES)
    with pytest.raises(DataError, match=r"changed after creation; run kilowatt data verify"):
        cache.get(sha, lambda: b"tampered", 0)
    assert cache.disk_entries() == {}


def test_a_corrupted_download_is_never_renamed_into_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_cache, "_CHUNK_BYTES", 64)  # many chunks hashed and written per shard
    shards = _shards(2)
    sha, other = shards
    tampered = bytearray(shards[sha])
    tampered[-1] ^= 0xFF  # the last byte: the mismatch shows only once all is written
    cache = ShardCache(tmp_path / "c", disk_bytes=10 * SHARD_BYTES)
    with pytest.raises(DataError, match=r"changed after creation"):
        cache.get(sha, lambda: bytes(tampered), 0)
    files = [p for p in (tmp_path / "c").rglob("*") if p.is_file() and ".locks" not in p.parts]
    assert files == []  # neither the shard nor its temporary file
    assert cache.stats.remote_fetches == 1
    assert cache.get(other, lambda: shards[other], 1) == shards[other]
    assert cache.disk_entries() == {other: SHARD_BYTES}
    assert (tmp_path / "c" / other[:2] / other).read_bytes() == shards[other]


def _read_all(directory: str, log: str, barrier: multiprocessing.synchronize.Barrier) -> None:
    shards = _shards(8)

    def fetch(sha: str) -> bytes:
        with open(log, "a") as out:  # O_APPEND: one line per download, from any process
            out.write(sha + "\n")
        return shards[sha]

    cache = ShardCache(Path(directory), disk_bytes=100 * SHARD_BYTES)
    barrier.wait()
    for at, sha in enumerate(shards):
        assert cache.get(sha, functools.partial(fetch, sha), at) == shards[sha]


def test_two_processes_download_each_shard_once(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(2)
    log = tmp_path / "downloads.log"
    log.touch()
    workers = [
        context.Process(target=_read_all, args=(str(tmp_path / "c"), str(log), barrier))
        for _ in range(2)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert [w.exitcode for w in workers] == [0, 0]
    downloads = log.read_text().split()
    assert sorted(downloads) == sorted(_shards(8))  # each shard exactly once


def test_memory_tier_serves_repeats_without_touching_disk(tmp_path: Path) -> None:
    shards = _shards(2)
    cache = ShardCache(tmp_path / "c", disk_bytes=10 * SHARD_BYTES, memory_bytes=2 * SHARD_BYTES)
    for at, sha in enumerate(itertools.islice(itertools.cycle(shards), 6)):
        cache.get(sha, lambda sha=sha: shards[sha], at)
    assert (cache.stats.remote_fetches, cache.stats.memory_hits) == (2, 4)
    assert cache.stats.hit_rate("memory") == pytest.approx(4 / 6)
