"""Data sets on a real S3 endpoint (moto's server on 127.0.0.1) read through the cache."""

from __future__ import annotations

import fcntl
import logging
import multiprocessing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import s3fs

from kilowatt.data import (
    DataSetVersion,
    Loader,
    Storage,
    create_dataset,
    open_dataset,
    verify_dataset,
)
from kilowatt.errors import DataError

ROWS = 2000
CREDENTIALS = {"key": "testing", "secret": "testing"}  # moto accepts any


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"id": np.arange(ROWS), "x": rng.random((ROWS, 8), dtype=np.float32)}


@pytest.fixture
def remote(s3_storage: Storage) -> DataSetVersion:
    return create_dataset(_arrays(), "toy", "v1", s3_storage, shard_bytes=8192)


def _ids(loader: Loader) -> list[int]:
    return [int(i) for batch in loader for i in batch["id"]]


def test_create_verify_read_back_equal(remote: DataSetVersion, s3_storage: Storage) -> None:
    assert remote.url.startswith("s3://")
    assert verify_dataset("toy:v1", s3_storage).bad == {}
    table = open_dataset("toy:v1", s3_storage).read_table()
    np.testing.assert_array_equal(table.column("id").to_numpy(), _arrays()["id"])
    got = table.column("x").combine_chunks().to_numpy_ndarray()
    np.testing.assert_array_equal(got, _arrays()["x"])


def test_a_tampered_remote_shard_fails_verify_by_name(
    remote: DataSetVersion, s3_storage: Storage, tmp_path: Path
) -> None:
    shard = remote.manifest.shards[3]
    fs, path = s3_storage.filesystem(remote.shard_url(shard))
    data = bytearray(fs.cat_file(path))
    data[-30] ^= 0xFF
    fs.pipe_file(path, bytes(data))
    assert verify_dataset("toy:v1", s3_storage).bad == {shard.name: "hash mismatch"}
    loader = Loader(remote, batch_size=64, cache_dir=tmp_path / "cache", disk_cache_bytes=10**7)
    with pytest.raises(DataError, match="changed after creation"):
        _ids(loader)


def test_a_corrupted_cached_shard_is_refetched(remote: DataSetVersion, tmp_path: Path) -> None:
    options: dict[str, Any] = {"cache_dir": tmp_path / "cache", "disk_cache_bytes": 10**7}
    first = Loader(remote, batch_size=64, memory_cache_bytes=0, **options)
    assert sorted(_ids(first)) == list(range(ROWS))
    cached = sorted((tmp_path / "cache").glob("??/*"))
    assert len(cached) == len(remote.manifest.shards)
    cached[0].write_bytes(b"\x00" * cached[0].stat().st_size)
    second = Loader(remote, batch_size=64, memory_cache_bytes=0, **options)
    assert sorted(_ids(second)) == list(range(ROWS))
    stats = second.stats.cache
    assert (stats.corrupt_refetches, stats.remote_fetches) == (1, 1)
    assert stats.disk_hits == len(remote.manifest.shards) - 1


def _read_epoch(version: DataSetVersion, cache_dir: str, barrier: Any, out: Any) -> None:
    loader = Loader(version, batch_size=64, cache_dir=Path(cache_dir), disk_cache_bytes=10**7)
    barrier.wait()
    ids = _ids(loader)
    out.put((sorted(ids) == list(range(ROWS)), loader.stats.cache.remote_fetches))


def test_two_processes_through_one_cache_download_each_shard_once(
    remote: DataSetVersion, tmp_path: Path
) -> None:
    context = multiprocessing.get_context("fork")
    barrier, out = context.Barrier(2), context.Queue()
    args = (remote, str(tmp_path / "cache"), barrier, out)
    readers = [context.Process(target=_read_epoch, args=args) for _ in range(2)]
    for reader in readers:
        reader.start()
    results = [out.get(timeout=120) for _ in readers]
    for reader in readers:
        reader.join(timeout=30)
    assert [whole for whole, _ in results] == [True, True]
    assert sum(fetches for _, fetches in results) == len(remote.manifest.shards)


def _disk_bytes(cache: Path) -> int:
    """Bytes in the disk tier, read under the cache's eviction lock: prefetch threads evict
    and write concurrently, so a listing taken without it can count a shard just evicted
    beside the one that replaced it."""
    locks = cache / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / "evict.lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            return sum(p.stat().st_size for p in cache.glob("??/*") if ".tmp-" not in p.name)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def test_half_the_data_cached_fetches_about_the_other_half_each_later_epoch(
    remote: DataSetVersion, tmp_path: Path
) -> None:
    total = remote.manifest.bytes
    cache_bytes = total // 2
    loader = Loader(
        remote,
        batch_size=64,
        cache_dir=tmp_path / "cache",
        disk_cache_bytes=cache_bytes,
        memory_cache_bytes=0,
        cache_aware_order=True,
    )
    remote_bytes, peak = [], 0
    for _ in range(3):
        before = loader.stats.cache.remote_bytes
        for _batch in loader:
            peak = max(peak, _disk_bytes(tmp_path / "cache"))
        remote_bytes.append(loader.stats.cache.remote_bytes - before)
    assert remote_bytes[0] == total
    optimum = total - cache_bytes
    assert remote_bytes[1] <= 1.1 * optimum and remote_bytes[2] <= 1.1 * optimum
    assert peak <= cache_bytes


def test_an_unreachable_endpoint_is_retried_then_named(tmp_path: Path) -> None:
    storage = Storage(
        "s3://nowhere/data",
        endpoint_url="http://127.0.0.1:9",
        options={**CREDENTIALS, "retries": 1, "config_kwargs": {"retries": {"max_attempts": 1}}},
    )
    with pytest.raises(
        DataError, match=r"cannot reach s3://nowhere/data/toy/v1.* after 4 attempts"
    ):
        open_dataset("toy:v1", storage)


def test_s3fs_sees_only_complete_versions(remote: DataSetVersion, s3_storage: Storage) -> None:
    fs = s3fs.S3FileSystem(
        endpoint_url=s3_storage.endpoint_url, skip_instance_cache=True, **CREDENTIALS
    )
    listing = fs.ls(remote.url.removeprefix("s3://"), detail=False)
    assert sorted(p.rsplit("/", 1)[-1] for p in listing) == ["manifest.json", "shards"]


def test_an_epoch_reads_each_shard_with_one_request(
    remote: DataSetVersion, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The manifest gives each shard's size, so no HEAD precedes a shard's GET (as seen by
    the S3 server, which runs in this process and logs every request)."""
    loader = Loader(remote, batch_size=64, cache_dir=tmp_path / "cache", disk_cache_bytes=10**7)
    with caplog.at_level(logging.INFO, logger="werkzeug"):
        assert sorted(_ids(loader)) == list(range(ROWS))
    requests = [r.getMessage() for r in caplog.records if r.name == "werkzeug"]
    shard_gets = [m for m in requests if "GET /" in m and "/shards/" in m]
    assert len(shard_gets) == len(remote.manifest.shards)
    assert not [m for m in requests if "HEAD /" in m]


def test_a_truncated_remote_shard_is_never_served(
    remote: DataSetVersion, s3_storage: Storage, tmp_path: Path
) -> None:
    shard = remote.manifest.shards[2]
    fs, path = s3_storage.filesystem(remote.shard_url(shard))
    fs.pipe_file(path, fs.cat_file(path)[:-100])
    loader = Loader(remote, batch_size=64, cache_dir=tmp_path / "cache", disk_cache_bytes=10**7)
    with pytest.raises(DataError, match="changed after creation"):
        _ids(loader)
    assert not list((tmp_path / "cache").glob(f"??/{shard.sha256}"))
