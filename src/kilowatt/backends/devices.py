"""Accelerators of this machine and their exclusive assignment to jobs.

A job that asks for ``accelerators: 2`` gets two device ids nobody else holds, passed to it
as ``CUDA_VISIBLE_DEVICES``; a job that asks for none gets ``CUDA_VISIBLE_DEVICES=""`` so it
cannot touch a device another job holds.

    >>> pool = DevicePool(["0", "1", "2"])
    >>> pool.acquire(job_id=7, count=2)
    ['0', '1']
    >>> pool.acquire(job_id=8, count=2) is None
    True
    >>> pool.release(7); pool.free
    ['0', '1', '2']
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence

from kilowatt.errors import SpecError

__all__ = ["DevicePool", "detect_devices"]


class DevicePool:
    """Device ids, each held by at most one job at a time.

    Args:
        devices: the ids to hand out (``["0", "1"]``; tests pass fake lists).
    """

    def __init__(self, devices: Sequence[str]) -> None:
        if len(set(devices)) != len(devices):
            raise SpecError(f"device list {list(devices)} names a device twice")
        self._order = list(devices)
        self._held: dict[int, list[str]] = {}

    @property
    def size(self) -> int:
        """How many devices the pool has."""
        return len(self._order)

    @property
    def free(self) -> list[str]:
        """The ids nobody holds, in the pool's order."""
        taken = {device for held in self._held.values() for device in held}
        return [device for device in self._order if device not in taken]

    def held_by(self, job_id: int) -> list[str]:
        """The ids ``job_id`` holds (empty if none)."""
        return list(self._held.get(job_id, []))

    def acquire(self, job_id: int, count: int) -> list[str] | None:
        """Give ``count`` free devices to ``job_id``; None when not enough are free.

        Raises:
            SpecError: the pool can never satisfy ``count``.
        """
        if count > self.size:
            raise SpecError(
                f"a job asks for {count} accelerator(s) but this worker has {self.size} "
                f"({self._order}); lower backend.accelerators or add devices"
            )
        if job_id in self._held:
            raise SpecError(f"job {job_id} already holds devices {self._held[job_id]}")
        free = self.free
        if count > len(free):
            return None
        self._held[job_id] = free[:count]
        return list(self._held[job_id])

    def release(self, job_id: int) -> None:
        """Return ``job_id``'s devices to the pool."""
        self._held.pop(job_id, None)


def detect_devices(env: Mapping[str, str] | None = None) -> list[str]:
    """This machine's CUDA devices: ``CUDA_VISIBLE_DEVICES`` if set, else those
    ``nvidia-smi`` lists, else none."""
    env = os.environ if env is None else env
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [part.strip() for part in visible.split(",") if part.strip()]
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return []
    try:
        listing = subprocess.run(
            [tool, "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []  # a broken driver means no usable devices, not a failed worker
    return [line.strip() for line in listing.splitlines() if line.strip()]
