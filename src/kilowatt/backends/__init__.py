"""Execution backends: where training, serving and batch jobs run.

``local`` runs on this machine (with a job queue in the store and ``kilowatt worker``);
``ray`` runs on a Ray cluster (Ray Train, Ray Serve, Ray Jobs). Both satisfy ``Backend``:

    >>> from kilowatt.backends import get_backend, read_job_file
    >>> backend = get_backend("local")  # doctest: +SKIP
    >>> job_id = backend.submit(read_job_file("train.yaml"))  # doctest: +SKIP

Ray is imported only when the ray backend is used (``pip install kilowatt[ray]``).
"""

from kilowatt.backends.base import Backend, get_backend, register_backend
from kilowatt.backends.devices import DevicePool, detect_devices
from kilowatt.backends.job import JobKind, JobRequest, read_job_file
from kilowatt.backends.local import LocalBackend

__all__ = [
    "Backend",
    "DevicePool",
    "JobKind",
    "JobRequest",
    "LocalBackend",
    "detect_devices",
    "get_backend",
    "read_job_file",
    "register_backend",
]
