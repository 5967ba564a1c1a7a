"""Creating, opening, verifying, listing and deleting data set versions.

A version is the folder ``<root>/<name>/<version>/`` holding ``shards/shard-NNNNN.arrow``
and ``manifest.json``. The manifest is written last and alone makes a version visible,
so a crashed or refused create never shows a half-written version.

    >>> from kilowatt.data import Storage, create_dataset
    >>> storage = Storage("/tmp/kw-data")
    >>> version = create_dataset({"x": [1, 2, 3]}, "tiny", "v1", storage)  # doctest: +SKIP
    >>> version.fingerprint[:8]  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import getpass
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from kilowatt.data._manifest import (
    MANIFEST_NAME,
    Manifest,
    ShardInfo,
    decode_shard,
    encode_shard,
    schema_hex,
    schema_summary,
    sha256_hex,
)
from kilowatt.data._sources import Source, record_batches, split_into_shards, table_to_arrays
from kilowatt.data._stats import compute_stats
from kilowatt.data._storage import Storage, with_retries
from kilowatt.errors import DataError

__all__ = [
    "DataSetVersion",
    "VerifyReport",
    "create_dataset",
    "delete_dataset",
    "list_versions",
    "open_dataset",
    "verify_dataset",
]

DEFAULT_SHARD_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class DataSetVersion:
    """An opened version: where it is and what its manifest says."""

    url: str
    manifest: Manifest
    storage: Storage

    @property
    def fingerprint(self) -> str:
        return self.manifest.fingerprint

    def shard_url(self, shard: ShardInfo) -> str:
        return f"{self.url}/shards/{shard.name}"

    def read_table(self) -> pa.Table:
        """Every row, read straight from storage and checked against the manifest's hashes."""
        tables = [
            decode_shard(self._checked_shard(s), self.shard_url(s)) for s in self.manifest.shards
        ]
        return pa.concat_tables(tables) if tables else self.manifest.arrow_schema.empty_table()

    def read_arrays(self, *columns: str) -> dict[str, Any]:
        """Every row of ``columns`` as numpy arrays (tensor columns keep their shape).

        Raises:
            DataError: a column the version lacks, naming the ones it has.
        """
        have = list(self.manifest.arrow_schema.names)
        missing = [c for c in columns if c not in have]
        if missing:
            m = self.manifest
            raise DataError(
                f"data set {m.name}:{m.version} has no column {', '.join(map(repr, missing))}; "
                f"its columns are {have}"
            )
        return table_to_arrays(self.read_table().select(list(columns)))

    def _checked_shard(self, shard: ShardInfo) -> bytes:
        url = self.shard_url(shard)
        data = self.storage.read_bytes(url)
        if len(data) != shard.bytes or sha256_hex(data) != shard.sha256:
            raise DataError(f"shard {url} does not match the manifest; run kilowatt data verify")
        return data


@dataclass(frozen=True)
class VerifyReport:
    """Per shard: ``ok``, ``missing``, ``truncated (N of M bytes)`` or ``hash mismatch``."""

    url: str
    results: dict[str, str]

    @property
    def bad(self) -> dict[str, str]:
        return {name: why for name, why in self.results.items() if why != "ok"}


def create_dataset(
    source: Source,
    name: str,
    version: str,
    storage: Storage,
    *,
    url: str | None = None,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    allow_schema_change: bool = False,
    staging_dir: Path | None = None,
) -> DataSetVersion:
    """Write ``source`` as version ``name:version`` (at ``url``, default under the root).

    Writing the same content again returns the existing version; different content under
    an existing version is refused, as is a schema unlike the newest version's (unless
    ``allow_schema_change``).
    """
    _check_name(name, version)
    if shard_bytes <= 0:
        raise DataError(f"shard size {shard_bytes} bytes must be positive; e.g. --shard-mb 64")
    target = url.rstrip("/") if url else storage.url_of(f"{name}:{version}")
    description, batches = record_batches(source)
    with tempfile.TemporaryDirectory(dir=staging_dir, prefix="kilowatt-data-") as scratch:
        shards, schema = _write_local_shards(batches, Path(scratch), shard_bytes)
        # Memory-mapped, so the statistics' two passes do not hold the whole set in memory.
        tables = [_mapped_shard(Path(scratch) / s.name) for s in shards]
        manifest = Manifest(
            name=name,
            version=version,
            schema=schema_summary(schema),
            shards=tuple(shards),
            arrow_schema_hex=schema_hex(schema),
            created_at=time.time(),
            created_by=_user(),
            source=description,
            stats=compute_stats(tables, schema),
        )
        existing = _existing(target, storage)
        if existing is not None:
            if existing.fingerprint == manifest.fingerprint:
                return existing
            raise DataError(
                f"data set {name}:{version} at {target} already holds other content "
                f"(fingerprint {existing.fingerprint[:16]}, new {manifest.fingerprint[:16]}); "
                "versions are immutable: create a new version"
            )
        if not url and not allow_schema_change:
            _check_schema_matches_newest(name, manifest, storage)
        _upload(Path(scratch), target, manifest, storage)
    return DataSetVersion(target, manifest, storage)


def _write_local_shards(
    batches: object, scratch: Path, shard_bytes: int
) -> tuple[list[ShardInfo], pa.Schema]:
    shards: list[ShardInfo] = []
    schema: pa.Schema | None = None
    for index, table in enumerate(split_into_shards(batches, shard_bytes)):  # type: ignore[arg-type]
        if schema is None:
            schema = table.schema
        elif not table.schema.equals(schema):
            raise DataError(f"shard {index} has schema {table.schema}, not {schema}")
        data = encode_shard(table)
        shard = ShardInfo(f"shard-{index:05d}.arrow", len(data), table.num_rows, sha256_hex(data))
        (scratch / shard.name).write_bytes(data)
        shards.append(shard)
    if schema is None:
        raise DataError("the source has no rows; a data set needs at least one sample")
    return shards, schema


def _upload(scratch: Path, target: str, manifest: Manifest, storage: Storage) -> None:
    written: list[str] = []
    try:
        for shard in manifest.shards:
            url = f"{target}/shards/{shard.name}"
            storage.write_bytes_atomic(url, _read(scratch / shard.name))
            written.append(url)
        storage.write_bytes_atomic(f"{target}/{MANIFEST_NAME}", manifest.to_json())
    except BaseException:
        # Without a manifest the shards are invisible; remove them too, best effort.
        for url in written:
            shard_fs, shard_path = storage.filesystem(url)
            with contextlib.suppress(Exception):
                shard_fs.rm_file(shard_path)
        raise


def open_dataset(ref: str, storage: Storage) -> DataSetVersion:
    """The version ``NAME:VERSION`` (under the storage root) or at a URL."""
    url = storage.url_of(ref)
    found = _existing(url, storage)
    if found is None:
        raise DataError(
            f"no data set version at {url} (from {ref!r}); list versions with kilowatt data list"
        )
    return found


def _existing(url: str, storage: Storage) -> DataSetVersion | None:
    manifest_url = f"{url}/{MANIFEST_NAME}"
    fs, path = storage.filesystem(manifest_url)
    # One request: the manifest itself (None when missing), not an existence check first.
    data = with_retries(lambda: _bytes_or_none(fs, path), manifest_url)
    if data is None:
        return None
    return DataSetVersion(url, Manifest.from_json(data, manifest_url), storage)


def _bytes_or_none(fs: Any, path: str) -> bytes | None:
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        return None


def verify_dataset(ref: str, storage: Storage) -> VerifyReport:
    """Re-read and re-hash every shard of a version against its manifest."""
    version = open_dataset(ref, storage)
    fs, _ = storage.filesystem(version.url)
    results: dict[str, str] = {}
    for shard in version.manifest.shards:
        url = version.shard_url(shard)
        _, path = storage.filesystem(url)
        if not with_retries(lambda path=path: fs.exists(path), url):
            results[shard.name] = "missing"
            continue
        data = storage.read_bytes(url)
        if len(data) != shard.bytes:
            results[shard.name] = f"truncated ({len(data)} of {shard.bytes} bytes)"
        elif sha256_hex(data) != shard.sha256:
            results[shard.name] = "hash mismatch"
        else:
            results[shard.name] = "ok"
    return VerifyReport(version.url, results)


def list_versions(storage: Storage, name: str | None = None) -> list[DataSetVersion]:
    """Every complete version under the root (those with a manifest), oldest first."""
    fs, root = storage.filesystem(storage.root)
    if not with_retries(lambda: fs.exists(root), storage.root):
        return []
    names = (
        [name] if name else [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)]
    )
    found: list[DataSetVersion] = []
    for data_name in names:
        folder = f"{storage.root.rstrip('/')}/{data_name}"
        _, folder_path = storage.filesystem(folder)
        if not fs.isdir(folder_path):
            continue
        for entry in fs.ls(folder_path, detail=False):
            version = _existing(f"{folder}/{entry.rstrip('/').rsplit('/', 1)[-1]}", storage)
            if version is not None:
                found.append(version)
    return sorted(found, key=lambda v: (v.manifest.name, v.manifest.created_at))


def delete_dataset(ref: str, storage: Storage) -> DataSetVersion:
    """Delete a version: the manifest first (the version disappears at once), then shards."""
    version = open_dataset(ref, storage)
    fs, path = storage.filesystem(version.url)
    with_retries(lambda: fs.rm_file(f"{path}/{MANIFEST_NAME}"), version.url)
    with_retries(lambda: fs.rm(path, recursive=True), version.url)
    return version


def _check_schema_matches_newest(name: str, manifest: Manifest, storage: Storage) -> None:
    versions = list_versions(storage, name)
    if not versions:
        return
    newest = versions[-1]
    if newest.manifest.schema != manifest.schema:
        raise DataError(
            f"{name}:{manifest.version} has schema {manifest.schema}, but {name}:"
            f"{newest.manifest.version} has {newest.manifest.schema}; fix the data, or pass "
            "--allow-schema-change (allow_schema_change=True) if the change is intended"
        )


def _check_name(name: str, version: str) -> None:
    for label, value in (("name", name), ("version", version)):
        if not value or any(c in value for c in "/:\\ ") or value.startswith("."):
            raise DataError(
                f"data set {label} {value!r} is not usable; use letters, digits, '-', '_' "
                "and '.', without '/', ':' or spaces"
            )


def _mapped_shard(path: Path) -> pa.Table:
    return pa.ipc.open_file(pa.memory_map(str(path))).read_all()


def _read(path: Path) -> bytes:
    return path.read_bytes()


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
