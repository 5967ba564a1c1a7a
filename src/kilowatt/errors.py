"""The exception tree of kilowatt.

Every error a user can cause is a ``KilowattError`` whose message names the bad value
and says how to fix it. The CLI prints it without a traceback and exits non-zero; the
API maps each class to one HTTP status (``kilowatt.api``).

    KilowattError
    ├── SpecError              a spec, setting or argument is invalid
    ├── CatalogError           a catalog data file or entry is invalid
    │   └── CatalogLookupError an accelerator, instance or region is not in the catalog
    ├── PlanInfeasible         no configuration satisfies the workload and constraints
    ├── CheckpointError        a checkpoint cannot be written, read or verified
    ├── MeterUnavailable       a power reader cannot read on this machine
    ├── StoreError             the tracking store refused an operation
    │   ├── NotFound           a run, model, dataset, ... does not exist
    │   ├── Conflict           the operation clashes with existing state
    │   ├── AuditTampered      the audit hash chain does not verify
    │   ├── AuditKeyError      the audit chain's key is too short or its file too open
    │   └── BackupError        a backup cannot be written, read, verified or restored
    ├── ServeError             a model cannot be loaded or a request cannot be served
    │   └── Overloaded         admission control refused a request
    ├── PermissionDenied       the caller's role does not allow the operation
    ├── BackendError           an execution backend (local queue, Ray) failed
    └── DataError              a data set, shard or cache cannot be read, written or verified
"""

from __future__ import annotations

__all__ = [
    "AuditKeyError",
    "AuditTampered",
    "BackendError",
    "BackupError",
    "CatalogError",
    "CatalogLookupError",
    "CheckpointError",
    "Conflict",
    "DataError",
    "KilowattError",
    "MeterUnavailable",
    "NotFound",
    "Overloaded",
    "PermissionDenied",
    "PlanInfeasible",
    "ServeError",
    "SpecError",
    "StoreError",
]


class KilowattError(Exception):
    """Base of every error kilowatt raises on purpose."""


class SpecError(KilowattError, ValueError):
    """A spec, setting or argument is invalid; the message names it and the fix."""


class CatalogError(KilowattError):
    """A catalog data file or entry is invalid (names file, entry and field)."""


class CatalogLookupError(CatalogError, LookupError):
    """A name is not in the catalog; the message suggests close matches."""


class PlanInfeasible(KilowattError):
    """No configuration satisfies the workload; the message says why each was rejected."""


class CheckpointError(KilowattError):
    """A checkpoint cannot be written, read or verified."""


class MeterUnavailable(KilowattError):
    """A power reader cannot read on this machine."""


class StoreError(KilowattError):
    """The tracking store refused an operation."""


class NotFound(StoreError, LookupError):
    """The named run, model version, dataset, token or job does not exist."""


class Conflict(StoreError):
    """The operation clashes with existing state (a duplicate, or dependents exist)."""


class AuditTampered(StoreError):
    """The audit log's hash chain does not verify; the message names the first bad event."""


class BackupError(StoreError):
    """A backup cannot be written, read, verified or restored; the message names the object."""


class AuditKeyError(StoreError):
    """The audit chain's HMAC key is unusable (too short, or its file readable by others)."""


class ServeError(KilowattError):
    """A model cannot be loaded or a request cannot be served."""


class Overloaded(ServeError):
    """Admission control refused a request; retry after ``retry_after_s`` seconds."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PermissionDenied(KilowattError):
    """The caller's role does not allow the operation."""


class BackendError(KilowattError):
    """An execution backend (the local queue or Ray) failed."""


class DataError(KilowattError):
    """A data set, shard or cache cannot be read, written or verified (names the URL)."""
