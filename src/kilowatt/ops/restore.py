"""``restore`` and ``verify``: rebuild a home and store from a backup, or check one in place.

A restore never edits the existing home: it builds the new one in a staging folder beside
it (every object's hash checked on the way), opens the restored store there (a backup from
a newer kilowatt is refused by the schema check), verifies the audit chain, and only then
swaps the staging folder in with two renames. A PostgreSQL dump is first loaded and checked
in a scratch database on the same server, then loaded into the store with ``pg_restore`` in
one transaction, after the files are staged and before the swap.

The audit key (see ``AUDIT_KEY_FILE``) is not in a backup unless it was taken with
``--include-audit-key``: the restore verifies the chain with the key of the environment or
of the home being replaced, and carries that key file into the new home.

    >>> report = restore_backup(Settings.from_env(), "s3://bucket/kilowatt")  # doctest: +SKIP
    >>> report.audit_events  # doctest: +SKIP
    42
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import fsspec
import sqlalchemy as sa

from kilowatt.errors import BackupError
from kilowatt.ops.backup import local_path_in
from kilowatt.ops.database import dialect_of, restore_postgres, scratch_postgres, sqlite_path
from kilowatt.ops.repository import BackupObject, BackupRepository, Manifest
from kilowatt.spec import Settings
from kilowatt.store import Store
from kilowatt.store import schema as t
from kilowatt.store._engine import create_store_engine, migrate, schema_revision
from kilowatt.store.artifacts import BlobStore
from kilowatt.store.audit_key import AUDIT_KEY_ENV, AUDIT_KEY_FILE, audit_key_path, load_audit_key

__all__ = ["RestoreReport", "restore_backup", "verify_audit_chain", "verify_backup"]


@dataclass(frozen=True)
class RestoreReport:
    """What a restore or a verification checked."""

    manifest: Manifest
    objects: int
    audit_events: int | None  # None: not verified (a PostgreSQL backup checked in place)


def verify_audit_chain(store: Store) -> int:
    """Verify the restored store's audit chain; the number of events.

    The one place backups call the store's audit verification.

    Raises:
        AuditTampered: naming the first bad event.
    """
    return store.check_audit()


def verify_backup(settings: Settings, url: str, *, snapshot: str | None = None) -> RestoreReport:
    """Check every object of a snapshot against its manifest without restoring it; for a
    SQLite backup, also open a scratch copy of the database and verify its audit chain with
    the audit key of ``settings`` (``KILOWATT_AUDIT_KEY`` or the home's key file).

    Raises:
        BackupError: naming the first missing or corrupt object.
    """
    repository = BackupRepository(url)
    manifest = repository.read_manifest(snapshot)
    for item in manifest.objects:
        repository.verify_object(item)
    events = None
    if manifest.dialect == "sqlite":
        with tempfile.TemporaryDirectory(prefix="kilowatt-verify-") as scratch:
            database = _database_object(manifest)
            copy = Path(scratch) / database.name
            repository.fetch_object(database, copy)
            events = _verify_restored(
                f"sqlite:///{copy}", str(Path(scratch)), manifest, settings.home
            )
    return RestoreReport(manifest, len(manifest.objects), events)


def restore_backup(
    settings: Settings, url: str, *, snapshot: str | None = None, force: bool = False
) -> RestoreReport:
    """Rebuild the home and store named by ``settings`` from the backup at ``url``.

    Args:
        snapshot: which snapshot (default: the newest complete one).
        force: replace a home or database that already holds data.

    Raises:
        BackupError: no complete snapshot, a damaged object, a mismatched database kind, or
            a non-empty target without ``force``. The existing home is left as it was.
        StoreError: the backup was written by a newer kilowatt.
        AuditTampered: the restored audit chain does not verify.
    """
    repository = BackupRepository(url)
    manifest = repository.read_manifest(snapshot)
    _check_target(settings, manifest, force)
    home = settings.home.expanduser()
    staging = home.parent / f".{home.name}.restore-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    staged = _StagedHome(settings, staging)
    try:
        with tempfile.TemporaryDirectory(prefix="kilowatt-restore-") as scratch:
            for item in manifest.objects:
                staged.put(repository, item, Path(scratch))
            staged.carry_audit_key(home)
            if manifest.dialect == "postgresql":
                dump = Path(scratch) / "database"
                events = _restore_postgres(dump, settings, staged, manifest)
            else:
                events = _verify_restored(staged.store_url, staged.artifacts_url, manifest, staging)
        _swap(staging, home)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return RestoreReport(manifest, len(manifest.objects), events)


def _database_object(manifest: Manifest) -> BackupObject:
    found = [item for item in manifest.objects if item.kind == "database"]
    if len(found) != 1:
        raise BackupError(f"snapshot {manifest.snapshot} has no database object; it is damaged")
    return found[0]


def _check_target(settings: Settings, manifest: Manifest, force: bool) -> None:
    dialect = dialect_of(settings.store_url)
    if dialect != manifest.dialect:
        raise BackupError(
            f"snapshot {manifest.snapshot} holds a {manifest.dialect} store but the target "
            f"store is {dialect} ({settings.store_url}); set KILOWATT_STORE_URL to a "
            f"{manifest.dialect} database"
        )
    home = settings.home.expanduser()
    if not force and home.is_dir() and any(home.iterdir()):
        raise BackupError(
            f"KILOWATT_HOME {home} is not empty; restore into an empty home or pass --force "
            "to replace it"
        )
    if dialect == "sqlite" and local_path_in(home, str(sqlite_path(settings.store_url))) is None:
        raise BackupError(
            f"the SQLite store {settings.store_url} is outside KILOWATT_HOME {home}; restore "
            "into a home that holds its store (unset KILOWATT_STORE_URL)"
        )
    if dialect == "postgresql" and not force and _holds_a_store(settings.store_url):
        raise BackupError(
            f"the database {sa.make_url(settings.store_url).render_as_string()} already holds "
            "a kilowatt store; restore into an empty database or pass --force to replace it"
        )


def _holds_a_store(store_url: str) -> bool:
    engine = sa.create_engine(store_url)
    try:
        return schema_revision(engine) is not None
    finally:
        engine.dispose()


class _StagedHome:
    """Where each object of a snapshot goes in the staging folder (or outside the home)."""

    def __init__(self, settings: Settings, staging: Path) -> None:
        home = settings.home.expanduser()
        self.home, self.staging = home, staging
        if dialect_of(settings.store_url) == "sqlite":
            relative = local_path_in(home, str(sqlite_path(settings.store_url)))
            self.store_url = f"sqlite:///{staging / str(relative)}"
        else:
            self.store_url = settings.store_url
        inside = local_path_in(home, settings.artifacts_url)
        # Artifacts outside the home are content-addressed and immutable: they are written in
        # place (existing blobs are left alone), since there is no home folder to stage them in.
        self.artifacts_url = str(staging / inside) if inside is not None else settings.artifacts_url
        self._blobs = BlobStore(self.artifacts_url)

    def put(self, repository: BackupRepository, item: BackupObject, scratch: Path) -> None:
        if item.kind == "database":
            target = self.store_url.removeprefix("sqlite:///")
            destination = Path(target) if self.store_url.startswith("sqlite") else None
            repository.fetch_object(item, destination or scratch / "database")
        elif item.kind == "artifact":
            local = scratch / "blob"
            repository.fetch_object(item, local)
            self._blobs.put(local, item.sha256)
        elif "://" in item.name:  # a checkpoint kept outside the home, by URL
            local = scratch / "file"
            repository.fetch_object(item, local)
            fs, path = fsspec.core.url_to_fs(item.name)
            if not fs.exists(path):  # never overwrite what lives outside the home
                fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
                fs.put_file(str(local), path)
        else:
            repository.fetch_object(item, self._inside(item))

    def _inside(self, item: BackupObject) -> Path:
        destination = (self.staging / item.name).resolve()
        if not destination.is_relative_to(self.staging.resolve()):
            raise BackupError(f"{item.label} names a path outside the home; the backup is unsafe")
        return destination

    def carry_audit_key(self, home: Path) -> None:
        """Keep the current home's audit key when the backup does not bring its own."""
        key, staged = home / AUDIT_KEY_FILE, self.staging / AUDIT_KEY_FILE
        if key.is_file() and not staged.exists():
            shutil.copy2(key, staged)


def _restore_postgres(
    dump: Path, settings: Settings, staged: _StagedHome, manifest: Manifest
) -> int:
    """Check the dump in a scratch database, then load it into the store in one transaction."""
    with scratch_postgres(settings.store_url) as scratch_url:
        restore_postgres(dump, scratch_url)
        events = _verify_restored(scratch_url, staged.artifacts_url, manifest, staged.staging)
    restore_postgres(dump, settings.store_url)
    return events


def _verify_restored(store_url: str, artifacts_url: str, manifest: Manifest, home: Path) -> int:
    """Open the restored store (refusing a newer schema), verify its audit chain with the
    key ``home`` will use and check that the snapshot holds every artifact it references;
    the number of audit events."""
    key = _existing_audit_key(home)
    engine = create_store_engine(store_url)
    try:
        migrate(engine, audit_key=key)
    except BaseException:
        engine.dispose()
        raise
    with Store(engine, artifacts_url=artifacts_url, actor="restore", audit_key=key) as store:
        events = verify_audit_chain(store)
        _check_blobs(store, manifest)
    return events


def _existing_audit_key(home: Path) -> bytes:
    # Never a new key: a chain can only be verified with the key that wrote it.
    if os.environ.get(AUDIT_KEY_ENV) or audit_key_path(home).is_file():
        return load_audit_key(home)
    raise BackupError(
        "no audit key to verify the backup's audit chain with: set "
        f"{AUDIT_KEY_ENV} to the key of the home the backup was taken from, or restore a "
        "backup taken with --include-audit-key"
    )


def _check_blobs(store: Store, manifest: Manifest) -> None:
    held = {item.sha256 for item in manifest.objects if item.kind == "artifact"}
    with store.engine.connect() as connection:
        rows = connection.execute(
            sa.select(t.artifacts.c.run_id, t.artifacts.c.name, t.artifacts.c.sha256)
        ).all()
    for run_id, name, sha256 in rows:
        if sha256 not in held:
            raise BackupError(
                f"artifact {name!r} of run {run_id} (sha256 {sha256[:12]}) is not in the "
                "backup; the snapshot is incomplete"
            )


def _swap(staging: Path, home: Path) -> None:
    """Replace ``home`` by ``staging`` with renames, putting the old home back on failure."""
    old = None
    if home.exists():
        old = home.with_name(f".{home.name}.replaced-{uuid.uuid4().hex[:8]}")
        home.rename(old)
    try:
        staging.rename(home)
    except BaseException:
        if old is not None:
            old.rename(home)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
