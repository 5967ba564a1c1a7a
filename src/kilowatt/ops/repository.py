"""A backup repository at any fsspec URL: content-addressed objects plus snapshot manifests.

    <url>/objects/<first two hex digits>/<sha256>   every file, stored once by content
    <url>/snapshots/<snapshot id>.json              one manifest per complete backup

Objects are written under a temporary name and renamed, so an object's final name always
holds its full content. A snapshot's manifest is written last, the same way, so a backup that
dies midway leaves objects but no manifest: it never looks complete, and a later backup
reuses the objects it already copied (incremental).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import fsspec

import kilowatt
from kilowatt.errors import BackupError

__all__ = [
    "BACKUP_FORMAT",
    "BackupObject",
    "BackupRepository",
    "Manifest",
]

# Bumped when a manifest's layout changes; a manifest with a higher number is refused.
BACKUP_FORMAT = 1
_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class BackupObject:
    """One file of a snapshot.

    Attributes:
        kind: ``database``, ``artifact``, ``checkpoint`` or ``home`` (a file of the home).
        name: where it goes back: a path relative to the home (``database``, ``home`` and
            checkpoints inside the home), the blob's hash (``artifact``), or a URL
            (checkpoints elsewhere).
        sha256: the content hash, which is also the object's name in the repository.
        size_bytes: the content's size.
    """

    kind: str
    name: str
    sha256: str
    size_bytes: int

    @property
    def label(self) -> str:
        """How errors name the object."""
        if self.kind == "artifact":  # named by its hash already
            return f"artifact sha256 {self.sha256[:12]}"
        return f"{self.kind} {self.name!r} (sha256 {self.sha256[:12]})"


@dataclass(frozen=True)
class Manifest:
    """What one snapshot holds; written last, so its presence means the backup completed.

    Attributes:
        snapshot: the snapshot's id (UTC time and a random suffix; sorts by time).
        dialect: ``sqlite`` or ``postgresql``: how the database object was taken.
        schema_revision: the store's migration revision when the backup was taken.
        audit_events: how many audit events the backed-up chain held.
        audit_key_included: whether the audit key file is in the snapshot.
    """

    snapshot: str
    created_at: float
    dialect: str
    schema_revision: str | None
    audit_events: int
    audit_key_included: bool
    objects: tuple[BackupObject, ...]
    kilowatt_version: str = kilowatt.__version__
    format: int = BACKUP_FORMAT

    def to_json(self) -> str:
        """The manifest as JSON, with a SHA-256 of its own body to catch edits."""
        body = asdict(self)
        return json.dumps({**body, "manifest_sha256": _body_digest(body)}, indent=1)

    @classmethod
    def from_json(cls, text: str, where: str) -> Manifest:
        """Parse and check a manifest read from ``where``.

        Raises:
            BackupError: it is not a manifest, was edited, or comes from a newer kilowatt.
        """
        try:
            body = json.loads(text)
            claimed = body.pop("manifest_sha256")
            version_format = int(body["format"])
        except (ValueError, KeyError, TypeError) as error:
            raise BackupError(
                f"{where} is not a kilowatt backup manifest ({error}); "
                "point at a URL written by `kilowatt backup`"
            ) from None
        if version_format > BACKUP_FORMAT:
            raise BackupError(
                f"{where} was written by kilowatt {body.get('kilowatt_version')} in backup "
                f"format {version_format}; this kilowatt {kilowatt.__version__} reads format "
                f"{BACKUP_FORMAT} at most. Upgrade kilowatt (pip install -U kilowatt)"
            )
        if _body_digest(body) != claimed:
            raise BackupError(
                f"manifest {where} does not match its recorded hash: it was edited or "
                "damaged; restore an older snapshot (--snapshot) or take a new backup"
            )
        objects = tuple(BackupObject(**item) for item in body.pop("objects"))
        return cls(objects=objects, **body)


def _body_digest(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class BackupRepository:
    """Objects and manifests under one fsspec URL.

    Raises:
        BackupError: the URL cannot be opened or written (unreachable, bad scheme, ...).
    """

    def __init__(self, url: str) -> None:
        self.url = url
        with self._reaching("open"):
            self._fs, root = fsspec.core.url_to_fs(url)
        self._root = root.rstrip("/")

    @contextmanager
    def _reaching(self, action: str) -> Iterator[None]:
        # fsspec back ends raise OSError subclasses, ValueError (unknown scheme) or
        # ImportError (scheme without its package); each means the target is not usable.
        try:
            yield
        except (OSError, ValueError, ImportError, EOFError) as error:
            raise BackupError(
                f"backup target {self.url!r} is unreachable ({action}: "
                f"{type(error).__name__}: {error}); check the URL, the network and credentials"
            ) from None

    def _object_path(self, sha256: str) -> str:
        return f"{self._root}/objects/{sha256[:2]}/{sha256}"

    def has_object(self, sha256: str) -> bool:
        """Whether an object with this hash is already stored."""
        with self._reaching("stat"):
            return bool(self._fs.exists(self._object_path(sha256)))

    def put_object(self, source: Path, sha256: str) -> bool:
        """Store a local file under its hash; False when it was already there."""
        if self.has_object(sha256):
            return False
        target = self._object_path(sha256)
        partial = f"{target}.partial-{uuid.uuid4().hex}"
        with self._reaching("write"):
            self._fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            self._fs.put_file(str(source), partial)
            self._fs.mv(partial, target)
        return True

    def fetch_object(self, item: BackupObject, destination: Path) -> None:
        """Copy an object to ``destination``, checking its hash on the way.

        Raises:
            BackupError: the object is missing or its content does not match the manifest.
        """
        destination.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with self._reaching("read"):
            try:
                with (
                    self._fs.open(self._object_path(item.sha256), "rb") as source,
                    destination.open("wb") as sink,
                ):
                    while chunk := source.read(_CHUNK_BYTES):
                        digest.update(chunk)
                        sink.write(chunk)
            except FileNotFoundError:
                raise self._missing(item) from None
        self._check(item, digest.hexdigest())

    def verify_object(self, item: BackupObject) -> None:
        """Re-hash a stored object.

        Raises:
            BackupError: naming the object whose content does not match the manifest.
        """
        digest = hashlib.sha256()
        with self._reaching("read"):
            try:
                with self._fs.open(self._object_path(item.sha256), "rb") as source:
                    while chunk := source.read(_CHUNK_BYTES):
                        digest.update(chunk)
            except FileNotFoundError:
                raise self._missing(item) from None
        self._check(item, digest.hexdigest())

    def _missing(self, item: BackupObject) -> BackupError:
        return BackupError(
            f"{item.label} is missing from {self.url}: the backup is damaged; restore another "
            "snapshot (--snapshot) or take a new backup"
        )

    def _check(self, item: BackupObject, actual: str) -> None:
        if actual != item.sha256:
            raise BackupError(
                f"{item.label} in {self.url} is corrupt: its content hashes to "
                f"{actual[:12]}, not the manifest's {item.sha256[:12]}; restore another "
                "snapshot (--snapshot) or take a new backup"
            )

    def write_manifest(self, manifest: Manifest) -> str:
        """Publish a snapshot (temporary name, then rename); return its path."""
        target = f"{self._root}/snapshots/{manifest.snapshot}.json"
        partial = f"{target}.partial-{uuid.uuid4().hex}"
        with self._reaching("write"):
            self._fs.makedirs(f"{self._root}/snapshots", exist_ok=True)
            self._fs.pipe_file(partial, manifest.to_json().encode())
            self._fs.mv(partial, target)
        return target

    def snapshots(self) -> list[str]:
        """The ids of complete snapshots, oldest first."""
        with self._reaching("list"):
            if not self._fs.exists(f"{self._root}/snapshots"):
                return []
            names = self._fs.ls(f"{self._root}/snapshots", detail=False)
        ids = [n.rsplit("/", 1)[-1] for n in names]
        return sorted(n.removesuffix(".json") for n in ids if n.endswith(".json"))

    def read_manifest(self, snapshot: str | None = None) -> Manifest:
        """The manifest of ``snapshot`` (default: the newest complete one).

        Raises:
            BackupError: there is no complete snapshot, or the named one does not exist.
        """
        complete = self.snapshots()
        if snapshot is None:
            if not complete:
                raise BackupError(self._no_snapshot_message())
            snapshot = complete[-1]
        elif snapshot not in complete:
            raise BackupError(
                f"{self.url} has no snapshot {snapshot!r}; it has: {', '.join(complete) or 'none'}"
            )
        path = f"{self._root}/snapshots/{snapshot}.json"
        with self._reaching("read"):
            text = self._fs.cat_file(path).decode()
        return Manifest.from_json(text, path)

    def _no_snapshot_message(self) -> str:
        with self._reaching("list"):
            has_objects = self._fs.exists(f"{self._root}/objects")
        if has_objects:
            return (
                f"{self.url} holds backup objects but no complete snapshot: the backup was "
                "interrupted before its manifest was written. Run `kilowatt backup` again "
                "(objects already copied are reused)"
            )
        return f"{self.url} holds no kilowatt backup; take one with `kilowatt backup {self.url}`"
