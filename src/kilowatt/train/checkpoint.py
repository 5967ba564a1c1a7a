"""Atomic, verified, asynchronous checkpoints to a folder or any fsspec URL.

Layout of one checkpoint (``<url>/step-000000120/``)::

    state.pt               model, optimizer, scheduler, scaler, step (written by rank 0)
    rank-0.pt, rank-1.pt   RNG states and data position of each rank
    manifest-rank-0.json   SHA-256 and size of that rank's files, step, metrics, world size

Each file is written to a temporary name, fsynced and renamed, and a rank's manifest is
written last; a checkpoint counts only when every rank's manifest exists and every hash
matches. A truncated or corrupted checkpoint is skipped with a ``CheckpointWarning`` and
the previous one used.

    >>> manager = CheckpointManager("/tmp/ckpt", keep_last=2)  # doctest: +SKIP
    >>> manager.save(10, {"model": model.state_dict()}, {"rng": capture_rng()})  # doctest: +SKIP
    >>> info = manager.latest()  # doctest: +SKIP
    >>> state, rank_state = manager.load(info)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import time
import uuid
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import fsspec
import torch
from fsspec.implementations.local import LocalFileSystem

from kilowatt.errors import CheckpointError
from kilowatt.train.state import to_host

__all__ = ["CheckpointInfo", "CheckpointManager", "CheckpointWarning", "SaveReport"]

_STEP_DIR = re.compile(r"^step-(\d{9})$")


class CheckpointWarning(UserWarning):
    """A checkpoint was incomplete or corrupted and an older one is used instead."""


@dataclass(frozen=True)
class CheckpointInfo:
    """A verified checkpoint: its step, folder URL, metrics and the world size that wrote it."""

    step: int
    url: str
    metrics: dict[str, float] = field(default_factory=dict)
    world_size: int = 1
    location_index: int = 0  # 0 = the primary location, 1 = the mirror


@dataclass(frozen=True)
class SaveReport:
    """What a save cost the step loop.

    Attributes:
        step: the step saved.
        stall_s: seconds the caller was blocked (host copy, plus waiting for the previous
            write; everything for a synchronous save).
        asynchronous: whether writing continues in the background.
    """

    step: int
    stall_s: float
    asynchronous: bool


class _Location:
    """One root (primary or mirror): atomic writes, reads and listing on an fsspec filesystem."""

    def __init__(self, url: str, fs: fsspec.AbstractFileSystem | None = None) -> None:
        if fs is None:
            fs, root = fsspec.core.url_to_fs(url)
        else:
            root = fs._strip_protocol(url)
        self.fs, self.root, self.url = fs, root.rstrip("/"), url.rstrip("/")
        self.local = isinstance(fs, LocalFileSystem)

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def write(self, relpath: str, data: bytes) -> None:
        target = self.path(relpath)
        if not self.local:
            # Object stores publish a PUT whole or not at all; the manifest guards the rest.
            self.fs.pipe_file(target, data)
            return
        directory = os.path.dirname(target)
        os.makedirs(directory, exist_ok=True)
        temp = os.path.join(directory, f".{os.path.basename(target)}.tmp-{uuid.uuid4().hex}")
        with open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
        _fsync_dir(directory)

    def read(self, relpath: str) -> bytes:
        return self.fs.cat_file(self.path(relpath))

    def steps(self) -> list[int]:
        try:
            names = [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.root, detail=False)]
        except FileNotFoundError:
            return []
        return sorted(int(m[1]) for n in names if (m := _STEP_DIR.match(n)))

    def remove(self, step: int) -> None:
        # Already gone is fine: another rank or an earlier prune removed it.
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.path(_step_name(step)), recursive=True)


def _fsync_dir(directory: str) -> None:
    # Makes the rename itself durable; not every platform can open a directory.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _step_name(step: int) -> str:
    return f"step-{step:09d}"


def _serialise(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


class CheckpointManager:
    """Writes, verifies, prunes and loads checkpoints of one rank.

    Args:
        url: a folder or fsspec URL for checkpoints.
        mirror_url: a second location written with every checkpoint; read if the first fails.
        keep_last: keep this many newest checkpoints.
        keep_best: ``(metric, "min" | "max")``: also keep the best checkpoint by that metric.
        asynchronous: copy state to host memory and write in a background thread.
        rank: this process's rank; rank 0 writes the shared state and prunes.
        world_size: number of ranks writing each checkpoint.
        fs: an fsspec filesystem to use for ``url`` (tests inject slow or failing ones).
        mirror_fs: the same for ``mirror_url``.
    """

    def __init__(
        self,
        url: str,
        mirror_url: str | None = None,
        keep_last: int = 3,
        keep_best: tuple[str, str] | None = None,
        asynchronous: bool = True,
        rank: int = 0,
        world_size: int = 1,
        fs: fsspec.AbstractFileSystem | None = None,
        mirror_fs: fsspec.AbstractFileSystem | None = None,
    ) -> None:
        if keep_last < 1:
            raise CheckpointError(f"keep_last must be >= 1, got {keep_last}")
        self._locations = [_Location(url, fs)]
        if mirror_url is not None:
            self._locations.append(_Location(mirror_url, mirror_fs))
        self.keep_last = keep_last
        self.keep_best = keep_best
        self.asynchronous = asynchronous
        self.rank, self.world_size = rank, world_size
        self._executor: ThreadPoolExecutor | None = None
        self._pending: Future[float] | None = None
        self._host_buffers: dict[str, torch.Tensor] = {}
        self.last_write_s = 0.0

    @property
    def url(self) -> str:
        """The primary location."""
        return self._locations[0].url

    @property
    def writing(self) -> bool:
        """Whether a background write is in flight."""
        return self._pending is not None and not self._pending.done()

    def save(
        self,
        step: int,
        state: dict[str, Any] | None,
        rank_state: dict[str, Any],
        metrics: dict[str, float] | None = None,
    ) -> SaveReport:
        """Checkpoint ``step``: ``state`` (rank 0's shared state; None on other ranks) and
        this rank's ``rank_state``. Returns how long the caller was blocked.

        Raises:
            CheckpointError: the previous background write failed, or this one did (sync).
        """
        started_s = time.perf_counter()
        self.wait()  # one write in flight at a time keeps memory and ordering bounded
        payload = {"state": state, "rank_state": rank_state}
        if not self.asynchronous:
            self._write(step, payload, dict(metrics or {}))
            return SaveReport(step, time.perf_counter() - started_s, asynchronous=False)
        # Safe to reuse last save's buffers: wait() above means no write still reads them.
        host_copy = to_host(payload, self._host_buffers)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="kilowatt-checkpoint")
        self._pending = self._executor.submit(self._write, step, host_copy, dict(metrics or {}))
        return SaveReport(step, time.perf_counter() - started_s, asynchronous=True)

    def wait(self) -> None:
        """Block until the background write (if any) is on storage; re-raise its failure."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        try:
            pending.result()
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(
                f"writing a checkpoint to {self.url} failed: {exc}; check the location "
                "is writable and has space"
            ) from exc

    def close(self) -> None:
        """Finish pending writes and stop the writer thread."""
        try:
            self.wait()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None

    def _write(self, step: int, payload: dict[str, Any], metrics: dict[str, float]) -> float:
        started_s = time.perf_counter()
        files: dict[str, bytes] = {f"rank-{self.rank}.pt": _serialise(payload["rank_state"])}
        if self.rank == 0:
            files["state.pt"] = _serialise(payload["state"])
        manifest = {
            "step": step,
            "rank": self.rank,
            "world_size": self.world_size,
            "metrics": metrics,
            "files": {
                name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
                for name, data in files.items()
            },
        }
        folder = _step_name(step)
        for location in self._locations:
            for name, data in files.items():
                location.write(f"{folder}/{name}", data)
            # The manifest goes last: its presence says every file before it is complete.
            manifest_bytes = json.dumps(manifest).encode()
            location.write(f"{folder}/manifest-rank-{self.rank}.json", manifest_bytes)
        if self.rank == 0:
            self._prune(step)
        self.last_write_s = time.perf_counter() - started_s
        return self.last_write_s

    def latest(self) -> CheckpointInfo | None:
        """The newest checkpoint that verifies, warning about each newer one that does not."""
        for index, location in enumerate(self._locations):
            for step in reversed(location.steps()):
                info = self._verified(index, step)
                if info is not None:
                    return info
        return None

    def _verified(self, index: int, step: int) -> CheckpointInfo | None:
        location, folder = self._locations[index], _step_name(step)
        try:
            manifests = [self._manifest(location, folder, 0)]
            world_size = int(manifests[0]["world_size"])
            manifests += [self._manifest(location, folder, r) for r in range(1, world_size)]
            for manifest in manifests:
                for name, expected in manifest["files"].items():
                    data = location.read(f"{folder}/{name}")
                    if hashlib.sha256(data).hexdigest() != expected["sha256"]:
                        raise CheckpointError(
                            f"{name} has {len(data)} bytes and a different SHA-256 than its "
                            f"manifest ({expected['bytes']} bytes)"
                        )
        except (CheckpointError, OSError, ValueError, KeyError) as exc:
            warnings.warn(
                f"checkpoint {location.url}/{folder} is incomplete or corrupted ({exc}); "
                "using the previous one",
                CheckpointWarning,
                stacklevel=3,
            )
            return None
        metrics = {k: float(v) for k, v in manifests[0].get("metrics", {}).items()}
        return CheckpointInfo(step, f"{location.url}/{folder}", metrics, world_size, index)

    @staticmethod
    def _manifest(location: _Location, folder: str, rank: int) -> dict[str, Any]:
        try:
            raw = location.read(f"{folder}/manifest-rank-{rank}.json")
        except FileNotFoundError:
            raise CheckpointError(f"manifest of rank {rank} is missing") from None
        return json.loads(raw)

    def load(self, info: CheckpointInfo) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        """Read ``info``'s shared state (rank 0's) and this rank's state, on CPU."""
        if info.world_size != self.world_size:
            raise CheckpointError(
                f"checkpoint {info.url} was written by {info.world_size} worker(s); resume "
                f"with workers: {info.world_size} (this run has {self.world_size})"
            )
        location = self._locations[info.location_index]
        folder = _step_name(info.step)
        state = _deserialise(location.read(f"{folder}/state.pt"))
        rank_state = _deserialise(location.read(f"{folder}/rank-{self.rank}.pt"))
        return state, rank_state

    def _prune(self, newest: int) -> None:
        for location in self._locations:
            steps = location.steps()
            keep = set(steps[-self.keep_last :]) | {s for s in steps if s > newest}
            best = self._best(location, steps)
            if best is not None:
                keep.add(best)
            for step in steps:
                if step not in keep:
                    location.remove(step)

    def _best(self, location: _Location, steps: list[int]) -> int | None:
        if self.keep_best is None:
            return None
        metric, mode = self.keep_best
        scored: list[tuple[float, int]] = []
        for step in steps:
            try:
                manifest = self._manifest(location, _step_name(step), 0)
            except (CheckpointError, OSError, ValueError):
                continue
            value = manifest.get("metrics", {}).get(metric)
            if value is not None:
                scored.append((float(value) if mode == "min" else -float(value), step))
        return min(scored)[1] if scored else None


def _deserialise(data: bytes) -> Any:
    # weights_only=False: the files hold RNG states (tuples, NumPy arrays) that kilowatt
    # itself wrote and verified against the manifest's SHA-256 before loading.
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
