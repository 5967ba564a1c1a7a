"""Data set versions on a local folder: create, verify, read back, immutability, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kilowatt.data import (
    Storage,
    create_dataset,
    delete_dataset,
    diff_stats,
    list_versions,
    open_dataset,
    verify_dataset,
)
from kilowatt.errors import DataError


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    return Storage(str(tmp_path / "data"))


def _arrays(n: int = 500, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "id": np.arange(n),
        "image": rng.random((n, 3, 4), dtype=np.float32),
        "label": rng.integers(0, 10, n),
    }


def test_arrays_read_back_equal_across_many_shards(storage: Storage) -> None:
    arrays = _arrays()
    created = create_dataset(arrays, "toy", "v1", storage, shard_bytes=4096)
    assert len(created.manifest.shards) > 3  # the round trip crosses shard boundaries
    assert verify_dataset("toy:v1", storage).bad == {}
    table = open_dataset("toy:v1", storage).read_table()
    assert table.column("id").to_pylist() == list(range(500))
    np.testing.assert_array_equal(
        table.column("image").combine_chunks().to_numpy_ndarray(), arrays["image"]
    )
    np.testing.assert_array_equal(table.column("label").to_numpy(), arrays["label"])
    assert created.manifest.rows == 500
    assert created.manifest.schema["label"] == "int64"


@pytest.mark.parametrize("kind", ["parquet", "csv", "folder", "iterable"])
def test_every_source_kind_reads_back_its_rows(kind: str, storage: Storage, tmp_path: Path) -> None:
    rows = [{"name": f"n{i}", "value": float(i)} for i in range(50)]
    source: object
    if kind == "parquet":  # a Parquet file
        source = tmp_path / "in.parquet"
        pq.write_table(pa.Table.from_pylist(rows), source)
    elif kind == "csv":  # a CSV file with a header
        source = tmp_path / "in.csv"
        source.write_text("name,value\n" + "".join(f"{r['name']},{r['value']}\n" for r in rows))
    elif kind == "folder":  # a folder of files: one row per file, path + bytes
        source = tmp_path / "files"
        for r in rows:
            (source / r["name"][:2]).mkdir(parents=True, exist_ok=True)
            (source / r["name"][:2] / r["name"]).write_bytes(str(r["value"]).encode())
    else:  # a Python iterable of samples
        source = iter(rows)
    created = create_dataset(source, "src", kind, storage, shard_bytes=256)
    table = open_dataset(f"src:{kind}", storage).read_table()
    if kind == "folder":
        got = dict(
            zip(table.column("path").to_pylist(), table.column("content").to_pylist(), strict=True)
        )
        assert got["n1/n12"] == b"12.0"
        assert table.num_rows == 50
    else:
        assert table.to_pylist() == rows
    assert created.manifest.rows == 50


def test_same_content_is_the_same_version_and_other_content_is_refused(storage: Storage) -> None:
    first = create_dataset(_arrays(), "toy", "v1", storage, shard_bytes=4096)
    again = create_dataset(_arrays(), "toy", "v1", storage, shard_bytes=4096)
    assert again.fingerprint == first.fingerprint
    with pytest.raises(DataError, match=r"toy:v1 .* already holds other content"):
        create_dataset(_arrays(seed=1), "toy", "v1", storage, shard_bytes=4096)
    assert open_dataset("toy:v1", storage).fingerprint == first.fingerprint


def test_a_new_version_with_another_schema_is_refused_unless_allowed(storage: Storage) -> None:
    create_dataset({"x": np.arange(10)}, "toy", "v1", storage)
    with pytest.raises(DataError, match=r"schema .*allow-schema-change"):
        create_dataset({"x": np.arange(10.0)}, "toy", "v2", storage)
    assert [v.manifest.version for v in list_versions(storage, "toy")] == ["v1"]
    create_dataset({"x": np.arange(10.0)}, "toy", "v2", storage, allow_schema_change=True)
    assert [v.manifest.version for v in list_versions(storage, "toy")] == ["v1", "v2"]


def test_verify_names_the_tampered_truncated_and_missing_shards(storage: Storage) -> None:
    created = create_dataset(_arrays(), "toy", "v1", storage, shard_bytes=4096)
    shards = Path(created.url) / "shards"
    names = [s.name for s in created.manifest.shards]
    tampered = bytearray((shards / names[0]).read_bytes())
    tampered[-20] ^= 0xFF
    (shards / names[0]).write_bytes(bytes(tampered))
    (shards / names[1]).write_bytes((shards / names[1]).read_bytes()[:100])
    (shards / names[2]).unlink()
    bad = verify_dataset("toy:v1", storage).bad
    assert bad[names[0]] == "hash mismatch"
    assert bad[names[1]].startswith("truncated (100 of")
    assert bad[names[2]] == "missing"
    assert len(bad) == 3
    with pytest.raises(DataError, match=names[0]):
        open_dataset("toy:v1", storage).read_table()


def test_a_failed_create_leaves_no_visible_version(storage: Storage) -> None:
    def samples():  # the third chunk of samples changes type mid-stream
        for i in range(3000):
            yield {"x": i if i < 2048 else f"s{i}"}

    with pytest.raises(DataError, match="change schema"):
        create_dataset(samples(), "toy", "v1", storage)
    assert list_versions(storage) == []
    with pytest.raises(DataError, match=r"no data set version at .*toy/v1"):
        open_dataset("toy:v1", storage)


def test_delete_removes_the_version(storage: Storage) -> None:
    create_dataset({"x": np.arange(10)}, "toy", "v1", storage)
    create_dataset({"x": np.arange(11)}, "toy", "v2", storage)
    delete_dataset("toy:v1", storage)
    assert [v.manifest.version for v in list_versions(storage)] == ["v2"]
    assert not (Path(storage.root) / "toy" / "v1").exists()


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("toy", "neither NAME:VERSION nor a URL"),  # no version
        ("a/b:v1", "neither NAME:VERSION nor a URL"),  # a slash in the name
    ],
)
def test_bad_references_say_what_to_write(ref: str, message: str, storage: Storage) -> None:
    with pytest.raises(DataError, match=message):
        open_dataset(ref, storage)


def test_stats_at_create_time_and_diff_shows_schema_change_and_shift(storage: Storage) -> None:
    rng = np.random.default_rng(0)
    a = create_dataset({"x": rng.normal(0, 1, 2000), "k": np.arange(2000)}, "d", "v1", storage)
    b = create_dataset(
        {"x": rng.normal(3, 1, 2000), "k2": np.arange(2000.0)},
        "d",
        "v2",
        storage,
        allow_schema_change=True,
    )
    stats = a.manifest.stats["columns"]["x"]
    assert stats["mean"] == pytest.approx(0.0, abs=0.1)
    assert sum(stats["histogram"]["counts"]) == 2000
    assert stats["nulls"] == 0
    diff = diff_stats(a.manifest.stats, b.manifest.stats)
    assert diff.added == {"k2": "double"}
    assert diff.removed == {"k": "int64"}
    assert diff.shifted == ["x"]
    same = diff_stats(a.manifest.stats, a.manifest.stats)
    assert same.shifted == [] and same.columns["x"]["psi"] == pytest.approx(0.0)


def test_a_training_spec_names_a_data_set_by_reference_or_mapping() -> None:
    from kilowatt.errors import SpecError
    from kilowatt.spec import TrainSpec, load_spec

    base = {"name": "job", "model": "m:f", "loss": "m:l"}
    short = load_spec(TrainSpec, {**base, "data": "digits:v1"})
    assert short.data is not None and short.data.dataset == "digits:v1"
    full = load_spec(TrainSpec, {**base, "data": {"dataset": "s3://b/d/v1", "workers": 2}})
    assert full.data is not None and full.data.workers == 2
    with pytest.raises(SpecError, match="both 'inputs' and 'targets'"):
        load_spec(TrainSpec, {**base, "data": {"dataset": "d:v1", "inputs": "x"}})
    with pytest.raises(SpecError, match="exactly one of 'dataset' or 'dataloader'"):
        load_spec(TrainSpec, {**base, "data": "d:v1", "dataset": "m:ds"})
    with pytest.raises(SpecError, match="fetch_threads"):
        load_spec(TrainSpec, {**base, "data": {"dataset": "d:v1", "fetch_threads": 0}})


def test_a_training_spec_sets_how_its_loader_reads(storage: Storage, tmp_path: Path) -> None:
    from kilowatt.data._spec import loader_from_spec
    from kilowatt.spec.data import DataSpec
    from kilowatt.spec.settings import Settings

    create_dataset(_arrays(), "toy", "v1", storage, shard_bytes=4096)
    settings = Settings(
        home=tmp_path, store_url="sqlite://", artifacts_url=str(tmp_path), user="u",
        data_url=storage.root,
    )  # fmt: skip
    spec = DataSpec(dataset="toy:v1", workers=1, prefetch_shards=3, fetch_threads=4)
    options = loader_from_spec(spec, settings).options
    assert (options.num_workers, options.prefetch_shards, options.fetch_threads) == (1, 3, 4)
