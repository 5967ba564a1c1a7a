"""The streaming loader: partitioning, seeded order, transforms, resume, cache bounds."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from kilowatt.data import DataSetVersion, Loader, Storage, create_dataset, verify_dataset
from kilowatt.data._order import Order
from kilowatt.errors import DataError

ROWS = 600


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    return Storage(str(tmp_path / "data"))


@pytest.fixture
def toy(storage: Storage) -> DataSetVersion:
    rng = np.random.default_rng(0)
    arrays = {"id": np.arange(ROWS), "x": rng.random((ROWS, 2), dtype=np.float32)}
    return create_dataset(arrays, "toy", "v1", storage, shard_bytes=1024)


def _ids(batches: Any) -> list[int]:
    return [int(i) for batch in batches for i in batch["id"]]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_ranks_and_workers_together_read_each_sample_once(
    toy: DataSetVersion, num_workers: int
) -> None:
    seen: list[int] = []
    for rank in range(3):
        loader = Loader(toy, batch_size=16, rank=rank, world_size=3, num_workers=num_workers)
        seen += _ids(loader)
    assert sorted(seen) == list(range(ROWS))


def test_order_is_seeded_shuffled_and_new_each_epoch(toy: DataSetVersion) -> None:
    first = Loader(toy, batch_size=50, seed=7)
    epoch0, epoch1 = _ids(first), _ids(first)
    assert epoch0 == _ids(Loader(toy, batch_size=50, seed=7))  # same seed, same order
    assert epoch0 != epoch1 and sorted(epoch1) == list(range(ROWS))
    assert epoch0 != list(range(ROWS))
    assert _ids(Loader(toy, batch_size=50, shuffle=False)) == list(range(ROWS))


def test_batches_are_tensors_and_transforms_run(toy: DataSetVersion) -> None:
    batches = list(Loader(toy, batch_size=32, shuffle=False))
    assert tuple(batches[0]["x"].shape) == (32, 2)
    assert len(batches[-1]["id"]) == ROWS % 32  # the last partial batch is kept
    odd = Loader(
        toy,
        batch_size=10,
        num_workers=2,
        map=_double_id,
        filter=_is_odd_id,
        collate=_ids_only,
    )
    got = [i for batch in odd for i in batch]
    assert sorted(got) == [2 * i for i in range(ROWS) if i % 2]


def test_worker_processes_give_the_same_batches_as_the_consumers_process(
    storage: Storage,
) -> None:
    rng = np.random.default_rng(1)
    arrays = {
        "id": np.arange(ROWS),
        "x": rng.random((ROWS, 2), dtype=np.float32),
        "blob": np.array([bytes([i % 256]) * 3 for i in range(ROWS)], dtype=object),
    }
    version = create_dataset(arrays, "mixed", "v1", storage, shard_bytes=2048)
    read = {n: list(Loader(version, batch_size=32, num_workers=n)) for n in (0, 1)}
    assert len(read[0]) == len(read[1])
    for here, there in zip(read[0], read[1], strict=True):
        for name in ("id", "x"):
            assert isinstance(there[name], torch.Tensor)
            assert torch.equal(here[name], there[name])
        assert isinstance(there["blob"], list) and there["blob"] == here["blob"]
    # A collate function's batches come back as it made them, in either process.
    for n in (0, 2):
        batch = next(iter(Loader(version, batch_size=8, num_workers=n, collate=_ids_array)))
        assert isinstance(batch, np.ndarray)


def _ids_array(samples: list[dict[str, Any]]) -> np.ndarray:
    return np.array([s["id"] for s in samples])


def _double_id(sample: dict[str, Any]) -> dict[str, Any]:
    return {**sample, "id2": int(sample["id"]) * 2}


def _is_odd_id(sample: dict[str, Any]) -> bool:
    return int(sample["id"]) % 2 == 1


def _ids_only(samples: list[dict[str, Any]]) -> list[int]:
    return [s["id2"] for s in samples]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_mid_epoch_reads_the_rest_exactly(toy: DataSetVersion, num_workers: int) -> None:
    loader = Loader(toy, batch_size=16, num_workers=num_workers, filter=_keep_all)
    before = _ids(itertools.islice(loader, 13))
    state = loader.state_dict()
    resumed = Loader(toy, batch_size=16, num_workers=num_workers, filter=_keep_all)
    resumed.load_state_dict(state)
    after = _ids(resumed)
    assert len(before) == 13 * 16
    assert sorted(before + after) == list(range(ROWS))
    assert resumed.epoch == 1 and _ids(resumed) != []  # and the next epoch is whole again


def _keep_all(sample: dict[str, Any]) -> bool:
    return True


def test_resume_with_another_worker_count_is_refused(toy: DataSetVersion) -> None:
    loader = Loader(toy, batch_size=16, num_workers=2)
    next(iter(loader))
    with pytest.raises(DataError, match="num_workers=2"):
        Loader(toy, batch_size=16, num_workers=1).load_state_dict(loader.state_dict())


def test_local_only_data_is_read_in_place_and_never_evicted(
    toy: DataSetVersion, storage: Storage, tmp_path: Path
) -> None:
    largest = max(s.bytes for s in toy.manifest.shards)
    loader = Loader(toy, batch_size=16, cache_dir=tmp_path / "cache", disk_cache_bytes=largest)
    for _ in range(2):
        assert sorted(_ids(loader)) == list(range(ROWS))
    assert verify_dataset("toy:v1", storage).bad == {}  # every shard still there, intact
    assert not any(p.is_file() for p in (tmp_path / "cache").glob("??/*"))


def test_a_quota_smaller_than_one_shard_is_refused_up_front(
    toy: DataSetVersion, tmp_path: Path
) -> None:
    with pytest.raises(DataError, match=r"smaller than one shard of toy:v1"):
        Loader(toy, cache_dir=tmp_path / "cache", disk_cache_bytes=10)


def test_unknown_data_set_names_the_url(storage: Storage) -> None:
    with pytest.raises(DataError, match=r"no data set version at .*/nope/v9"):
        Loader("nope:v9", storage)


def test_trainer_exports_the_loaders_figures_as_prometheus_metrics(
    toy: DataSetVersion, tmp_path: Path
) -> None:
    import torch
    from prometheus_client import CollectorRegistry

    from kilowatt.train import Trainer
    from kilowatt.train.metrics import PrometheusCallback

    registry = CollectorRegistry()
    loader = Loader(toy, memory_cache_bytes=0)
    model = torch.nn.Linear(2, 1)
    Trainer(
        model,
        training_step=lambda m, batch: m(batch["x"]).pow(2).mean(),
        train_data=loader,
        steps=ROWS // 16,  # exactly one epoch in batches of 16
        batch_size=16,
        log_every=1,
        callbacks=[PrometheusCallback(registry=registry)],
        checkpoint={"url": str(tmp_path / "ckpt")},
        progress=False,
        meter=None,
    ).fit()
    assert registry.get_sample_value("kilowatt_train_data_remote_bytes") == toy.manifest.bytes
    assert registry.get_sample_value("kilowatt_train_data_wait_s") == pytest.approx(
        loader.stats.wait_s
    )


def _with_worker_pid(sample: dict[str, Any]) -> dict[str, Any]:
    return {**sample, "pid": os.getpid()}


def test_workers_persist_across_epochs_and_read_each_epochs_order(toy: DataSetVersion) -> None:
    loader = Loader(toy, batch_size=16, num_workers=2, map=_with_worker_pid)
    first = list(loader)
    second = list(loader)
    pids = {int(p) for batch in first + second for p in batch["pid"]}
    assert len(pids) == 2 and os.getpid() not in pids  # the same two workers both epochs
    fresh = Loader(toy, batch_size=16, num_workers=2, map=_with_worker_pid)
    fresh.set_epoch(1)
    assert _ids(second) == _ids(fresh) and _ids(second) != _ids(first)
    assert sorted(_ids(second)) == list(range(ROWS))


@pytest.mark.parametrize("num_workers", [0, 1, 2])
def test_figures_add_up_over_epochs_and_the_memory_tier_serves_the_second(
    toy: DataSetVersion, num_workers: int
) -> None:
    shards, size = len(toy.manifest.shards), toy.manifest.bytes
    loader = Loader(toy, batch_size=16, num_workers=num_workers)
    list(loader)
    first = loader.stats.metrics()
    assert first["data_remote_bytes"] == size and first["data_memory_bytes"] == 0
    list(loader)
    both = loader.stats.metrics()
    # every read counted once, by the tier that served it
    assert both["data_remote_bytes"] + both["data_memory_bytes"] == 2 * size
    assert loader.stats.cache.reads == 2 * shards and loader.stats.samples == 2 * ROWS
    if num_workers <= 1:  # one process reads every shard: the second epoch is all memory
        assert both["data_remote_bytes"] == size and loader.stats.cache.memory_hits == shards
        assert both["data_memory_hit_rate"] == 0.5


def test_cache_aware_order_opens_each_epoch_with_the_shards_the_last_one_ended_with() -> None:
    kept = 3
    order = Order(num_shards=20, seed=4, rank=1, world_size=2, cache_aware_shards=kept)
    epochs = [order.rank_shards(epoch) for epoch in range(4)]
    assert all(sorted(e) == sorted(epochs[0]) for e in epochs)  # the rank keeps its shards
    for previous, current in itertools.pairwise(epochs):
        assert set(current[:kept]) == set(previous[-kept:])
        assert current != previous  # both groups are reshuffled
    assert epochs == [order.rank_shards(epoch) for epoch in range(4)]  # a pure function


@pytest.mark.parametrize(
    ("row_bytes", "batch_size", "ahead"),
    [(16000, 64, 16), (4, 32, 64), (4 << 20, 64, 2)],  # 1 MB, tiny and 256 MiB batches
)
def test_a_worker_runs_ahead_by_about_16_mib_of_batches(
    storage: Storage, row_bytes: int, batch_size: int, ahead: int
) -> None:
    rows = np.zeros((4, row_bytes), dtype=np.uint8)
    version = create_dataset({"x": rows}, f"rows{row_bytes}", "v1", storage)
    loader = Loader(version, batch_size=batch_size, num_workers=1)
    assert loader._workers().prefetch_factor == ahead
