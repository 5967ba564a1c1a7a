"""``backup``: a consistent snapshot of a kilowatt home and store to any fsspec URL.

The database is copied first (one consistent state); the artifacts and checkpoints it
references are then copied from the snapshot's own rows. Artifacts are immutable and named
by content, and a run's artifact is stored before its row commits, so every blob the
snapshot names exists. Each file becomes a content-addressed object (copied once across all
backups to the same URL) and the manifest, listing every object's SHA-256, is written last.

    >>> result = take_backup(Settings.from_env(), "s3://bucket/kilowatt")  # doctest: +SKIP
    >>> result.manifest.snapshot  # doctest: +SKIP
    '20260101T120000Z-3f2a'
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import fsspec
import sqlalchemy as sa

from kilowatt.errors import BackupError
from kilowatt.ops.database import dialect_of, dump_postgres, snapshot_sqlite, sqlite_path
from kilowatt.ops.repository import BackupObject, BackupRepository, Manifest
from kilowatt.spec import Settings
from kilowatt.store import schema as t
from kilowatt.store._engine import create_store_engine, schema_revision
from kilowatt.store.artifacts import BlobStore, sha256_file
from kilowatt.store.audit_key import AUDIT_KEY_FILE

__all__ = ["BackupResult", "local_path_in", "take_backup"]

# Parts of the home that are not copied as plain files: the database (copied through its
# backup API), artifacts and checkpoints (copied from what the database references), and
# caches that are rebuilt on demand. The audit key is left out unless asked for: a key
# stored beside the database it protects would let whoever holds the backup forge a chain.
_SKIPPED_IN_HOME = ("artifacts", "checkpoints", "serve-cache", "profile", AUDIT_KEY_FILE)
_SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


@dataclass(frozen=True)
class BackupResult:
    """What a backup wrote: the manifest, and how much was new versus already stored."""

    manifest: Manifest
    copied_objects: int
    reused_objects: int
    copied_bytes: int


def take_backup(
    settings: Settings,
    url: str,
    *,
    include_audit_key: bool = False,
    clock: Callable[[], float] = time.time,
) -> BackupResult:
    """Back up the store and home named by ``settings`` to the fsspec ``url``.

    Args:
        include_audit_key: also copy the audit key file (see ``AUDIT_KEY_FILE``).

    Raises:
        BackupError: the target is unreachable, a tool is missing, or the source is damaged.
    """
    repository = BackupRepository(url)
    dialect = dialect_of(settings.store_url)
    with tempfile.TemporaryDirectory(prefix="kilowatt-backup-") as scratch_dir:
        writer = _ObjectWriter(repository, Path(scratch_dir))
        database, engine = _copy_database(settings, dialect, Path(scratch_dir))
        try:
            references = _References.read(engine, settings)
        finally:
            engine.dispose()
        writer.add_file("database", database.name, database)
        _copy_artifacts(settings, references.artifact_blobs, writer)
        for location in references.checkpoint_locations:
            _copy_tree(location, settings.home, "checkpoint", writer)
        _copy_home_files(settings, writer, include_audit_key, database.name)
        now_s = clock()
        manifest = Manifest(
            snapshot=_snapshot_id(now_s),
            created_at=now_s,
            dialect=dialect,
            schema_revision=references.schema_revision,
            audit_events=references.audit_events,
            audit_key_included=include_audit_key and (settings.home / AUDIT_KEY_FILE).is_file(),
            objects=tuple(writer.objects),
        )
    repository.write_manifest(manifest)
    return BackupResult(manifest, writer.copied, writer.reused, writer.copied_bytes)


def _snapshot_id(now_s: float) -> str:
    # UTC to the microsecond first, so ids sort by time and the newest is the last
    stamp = datetime.fromtimestamp(now_s, tz=UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"{stamp}-{uuid.uuid4().hex[:6]}"


class _ObjectWriter:
    """Puts files into the repository and remembers each as a manifest entry."""

    def __init__(self, repository: BackupRepository, scratch: Path) -> None:
        self.repository = repository
        self.scratch = scratch
        self.objects: list[BackupObject] = []
        self.copied = self.reused = self.copied_bytes = 0

    def add_file(self, kind: str, name: str, path: Path, sha256: str | None = None) -> None:
        digest, size = sha256_file(path)
        if sha256 is not None and digest != sha256:
            raise BackupError(
                f"{kind} {name!r} in the source is corrupt (sha256 {digest[:12]}, expected "
                f"{sha256[:12]}); repair the source before backing it up"
            )
        if self.repository.put_object(path, digest):
            self.copied, self.copied_bytes = self.copied + 1, self.copied_bytes + size
        else:
            self.reused += 1
        self.objects.append(BackupObject(kind, name, digest, size))

    def add_stream(
        self, kind: str, name: str, opener: Callable[[], IO[bytes]], sha256: str | None = None
    ) -> None:
        """Copy a file through scratch space (it may be remote), then add it."""
        local = self.scratch / "stream"
        try:
            with opener() as source, local.open("wb") as sink:
                while chunk := source.read(1 << 20):
                    sink.write(chunk)
            self.add_file(kind, name, local, sha256)
        finally:
            local.unlink(missing_ok=True)

    def add_known(self, kind: str, name: str, sha256: str, size_bytes: int) -> bool:
        """Record an object the repository already holds; False when it does not."""
        if not self.repository.has_object(sha256):
            return False
        self.objects.append(BackupObject(kind, name, sha256, size_bytes))
        self.reused += 1
        return True


def _copy_database(settings: Settings, dialect: str, scratch: Path) -> tuple[Path, sa.Engine]:
    """The database copy, and an engine to read references from (the copy where possible)."""
    if dialect == "sqlite":
        source = sqlite_path(settings.store_url)
        copy = scratch / source.name
        snapshot_sqlite(source, copy)
        return copy, sa.create_engine(f"sqlite:///{copy}")
    copy = scratch / "postgresql.dump"
    # The dump is one snapshot; rows added after it only add references, never remove them.
    dump_postgres(settings.store_url, copy)
    return copy, create_store_engine(settings.store_url)


@dataclass(frozen=True)
class _References:
    artifact_blobs: dict[str, int]  # sha256 -> size in bytes
    checkpoint_locations: list[str]
    schema_revision: str | None
    audit_events: int

    @classmethod
    def read(cls, engine: sa.Engine, settings: Settings) -> _References:
        with engine.connect() as connection:
            blobs = connection.execute(
                sa.select(t.artifacts.c.sha256, t.artifacts.c.size_bytes).distinct()
            ).all()
            runs = connection.execute(sa.select(t.runs.c.id, t.runs.c.name)).all()
            checkpoint_params = dict(
                connection.execute(
                    sa.select(t.params.c.run_id, t.params.c.value).where(
                        t.params.c.key == "checkpoint"
                    )
                ).all()
            )
            audit_events = connection.execute(
                sa.select(sa.func.count()).select_from(t.audit_events)
            ).scalar_one()
        locations = sorted(
            {_checkpoint_location(name, checkpoint_params.get(id_), settings) for id_, name in runs}
        )
        return cls(dict(sorted(blobs)), locations, schema_revision(engine), int(audit_events))


def _checkpoint_location(run_name: str, param: str | None, settings: Settings) -> str:
    """Where a run's checkpoints went: its spec's ``checkpoint.url`` or the default folder."""
    try:
        url = (json.loads(param) or {}).get("url") if param else None
    except (ValueError, AttributeError):
        url = None
    return str(url or settings.home / "checkpoints" / run_name)


def _copy_artifacts(settings: Settings, blobs: dict[str, int], writer: _ObjectWriter) -> None:
    store = BlobStore(settings.artifacts_url)
    for sha256, size_bytes in blobs.items():
        # content-addressed on both sides: a blob the repository holds is not copied again
        if writer.add_known("artifact", sha256, sha256, size_bytes):
            continue
        try:
            writer.add_stream("artifact", sha256, lambda sha=sha256: store.open(sha), sha256)
        except FileNotFoundError:
            raise BackupError(
                f"artifact {sha256[:12]} is referenced by the store but missing from the "
                f"artifact store {settings.artifacts_url}; the source is damaged"
            ) from None


def local_path_in(home: Path, url: str) -> str | None:
    """``url``'s path relative to ``home`` when it is a local path inside it, else None."""
    if "://" in url and not url.startswith("file://"):
        return None
    path = Path(url.removeprefix("file://")).expanduser().resolve()
    try:
        return path.relative_to(home.expanduser().resolve()).as_posix()
    except ValueError:
        return None


def _copy_tree(location: str, home: Path, kind: str, writer: _ObjectWriter) -> None:
    """Every file under ``location`` (any fsspec URL), named relative to the home if inside."""
    inside = local_path_in(home, location)
    try:
        fs, root = fsspec.core.url_to_fs(location)
        files = fs.find(root) if fs.isdir(root) else []
    except (OSError, ValueError, ImportError):
        return  # a run whose checkpoints are gone or unreachable has nothing to copy
    for path in sorted(files):
        relative = path[len(root.rstrip("/")) + 1 :]
        name = f"{inside}/{relative}" if inside is not None else fs.unstrip_protocol(path)
        writer.add_stream(kind, name, lambda p=path: fs.open(p, "rb"))


def _home_files(home: Path, include_audit_key: bool, database: str) -> Iterator[Path]:
    database_names = {database, *(f"{database}{suffix}" for suffix in _SQLITE_SIDE_FILES)}
    for path in sorted(home.rglob("*")):
        top = path.relative_to(home).parts[0]
        if not path.is_file() or top in database_names:
            continue
        if top in _SKIPPED_IN_HOME and not (include_audit_key and top == AUDIT_KEY_FILE):
            continue
        yield path


def _copy_home_files(
    settings: Settings, writer: _ObjectWriter, include_audit_key: bool, database: str
) -> None:
    if not settings.home.is_dir():
        return
    for path in _home_files(settings.home, include_audit_key, database):
        writer.add_file("home", path.relative_to(settings.home).as_posix(), path)
