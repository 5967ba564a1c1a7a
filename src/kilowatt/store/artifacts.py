"""Artifacts: files logged on runs, stored by content (SHA-256) through fsspec.

A blob lives at ``<artifacts_url>/sha256/<first two hex digits>/<hash>``, so identical files
logged by many runs are stored once. Blobs are written under a temporary name and renamed,
so a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from pathlib import Path
from typing import IO, Any

import fsspec
import sqlalchemy as sa

from kilowatt.errors import Conflict, NotFound, SpecError, StoreError
from kilowatt.store import schema as t
from kilowatt.store.records import Artifact
from kilowatt.store.runs import RunsMixin

__all__ = ["ArtifactsMixin", "BlobStore", "sha256_file"]

_CHUNK_BYTES = 1 << 20


def sha256_file(path: Path) -> tuple[str, int]:
    """The SHA-256 (hex) and size in bytes of a local file."""
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


class BlobStore:
    """The content-addressed bytes under an artifacts URL, ``sha256/ab/abcd...``.

    Needs no database: backups read and restores write blobs through it directly.
    """

    def __init__(self, artifacts_url: str) -> None:
        self.fs, root = fsspec.core.url_to_fs(artifacts_url)
        self.root = root.rstrip("/")

    def path(self, sha256: str) -> str:
        return f"{self.root}/sha256/{sha256[:2]}/{sha256}"

    def open(self, sha256: str) -> IO[bytes]:
        """Open the stored bytes with this hash; close it when done."""
        return self.fs.open(self.path(sha256), "rb")

    def put(self, path: Path, sha256: str) -> None:
        """Store a local file whose hash the caller has computed; a no-op if present."""
        blob = self.path(sha256)
        if self.fs.exists(blob):
            return  # content-addressed: the same bytes are already stored
        self.fs.makedirs(blob.rsplit("/", 1)[0], exist_ok=True)
        partial = f"{blob}.partial-{uuid.uuid4().hex}"
        self.fs.put_file(str(path), partial)
        self.fs.mv(partial, blob)  # readers never see a partial blob


class ArtifactsMixin(RunsMixin):
    """Logging, listing, opening and downloading artifacts."""

    _blobs_cache: BlobStore | None = None

    @property
    def _blobs(self) -> BlobStore:
        if self._blobs_cache is None:
            self._blobs_cache = BlobStore(self._artifacts_url)
        return self._blobs_cache

    def _filesystem(self) -> tuple[Any, str]:
        return self._blobs.fs, self._blobs.root

    def _blob_path(self, sha256: str) -> str:
        return self._blobs.path(sha256)

    def log_artifact(self, run_id: str, path: str | Path, name: str | None = None) -> Artifact:
        """Store a local file on a run under ``name`` (default: the file name).

        Raises:
            SpecError: ``path`` is not a file.
            Conflict: the run already has a different file under ``name``.
        """
        path = Path(path)
        if not path.is_file():
            raise SpecError(f"artifact {str(path)!r} is not a file; pass the path of a file")
        name = name or path.name
        sha256, size = sha256_file(path)
        existing = self._find_artifact(run_id, name)
        if existing is not None:
            if existing.sha256 == sha256:
                return existing
            raise Conflict(
                f"run {run_id} already has an artifact {name!r} with other content "
                f"(sha256 {existing.sha256[:12]}); log it under another name"
            )
        self._upload(path, sha256)
        with self._write() as connection:
            self._run_row(connection, run_id)
            now = time.time()
            result = connection.execute(
                sa.insert(t.artifacts).values(
                    run_id=run_id, name=name, sha256=sha256, size_bytes=size, created_at=now
                )
            )
        return Artifact(int(result.inserted_primary_key[0]), run_id, name, sha256, size, now)

    def log_artifacts(self, run_id: str, folder: str | Path, prefix: str = "") -> list[Artifact]:
        """Store every file under ``folder``, named by its relative path (after ``prefix``)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise SpecError(f"{str(folder)!r} is not a folder; pass a folder or use log_artifact")
        return [
            self.log_artifact(run_id, path, f"{prefix}{path.relative_to(folder).as_posix()}")
            for path in sorted(folder.rglob("*"))
            if path.is_file()
        ]

    def _upload(self, path: Path, sha256: str) -> None:
        self._blobs.put(path, sha256)

    def list_artifacts(self, run_id: str) -> list[Artifact]:
        """A run's artifacts, by name."""
        query = (
            sa.select(t.artifacts)
            .where(t.artifacts.c.run_id == run_id)
            .order_by(t.artifacts.c.name)
        )
        with self._engine.connect() as connection:
            return [_to_artifact(row) for row in connection.execute(query)]

    def get_artifact(self, run_id: str, name: str) -> Artifact:
        """The artifact ``name`` of ``run_id``.

        Raises:
            NotFound: naming the artifacts the run does have.
        """
        found = self._find_artifact(run_id, name)
        if found is None:
            self.get_run(run_id)  # an unknown run is the clearer error
            names = [artifact.name for artifact in self.list_artifacts(run_id)]
            raise NotFound(
                f"run {run_id} has no artifact {name!r}; it has: {', '.join(names) or 'none'}"
            )
        return found

    def open_artifact(self, run_id: str, name: str) -> IO[bytes]:
        """Open an artifact for reading (binary); close it when done."""
        artifact = self.get_artifact(run_id, name)
        fs, _root = self._filesystem()
        return fs.open(self._blob_path(artifact.sha256), "rb")

    def download_artifact(self, run_id: str, name: str, destination: str | Path) -> Path:
        """Copy an artifact to ``destination`` (a file path, or a folder to put it in),
        checking its SHA-256 on the way.

        Raises:
            StoreError: the stored bytes do not match the recorded hash.
        """
        artifact = self.get_artifact(run_id, name)
        destination = Path(destination)
        if destination.is_dir():
            destination = destination / Path(artifact.name).name
        destination.parent.mkdir(parents=True, exist_ok=True)
        partial = destination.with_name(f".{destination.name}.partial")
        digest = hashlib.sha256()
        with self.open_artifact(run_id, name) as source, partial.open("wb") as sink:
            while chunk := source.read(_CHUNK_BYTES):
                digest.update(chunk)
                sink.write(chunk)
        if digest.hexdigest() != artifact.sha256:
            partial.unlink(missing_ok=True)
            raise StoreError(
                f"artifact {name!r} of run {run_id} is corrupt in the artifact store (sha256 "
                f"{digest.hexdigest()[:12]}, expected {artifact.sha256[:12]}); log it again"
            )
        partial.replace(destination)
        return destination

    def _find_artifact(self, run_id: str, name: str) -> Artifact | None:
        query = sa.select(t.artifacts).where(
            t.artifacts.c.run_id == run_id, t.artifacts.c.name == name
        )
        with self._engine.connect() as connection:
            row = connection.execute(query).first()
        return None if row is None else _to_artifact(row)


def _to_artifact(row: Any) -> Artifact:
    return Artifact(row.id, row.run_id, row.name, row.sha256, row.size_bytes, row.created_at)
