"""Operating kilowatt: backup and restore, and Prometheus and Grafana exports.

    >>> from kilowatt.ops import take_backup, restore_backup  # doctest: +SKIP
    >>> take_backup(Settings.from_env(), "s3://bucket/kilowatt")  # doctest: +SKIP

Imports are lazy so ``kilowatt export prometheus`` does not load the store's database code.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["BackupResult", "RestoreReport", "restore_backup", "take_backup", "verify_backup"]

_PUBLIC = {
    "BackupResult": "kilowatt.ops.backup",
    "take_backup": "kilowatt.ops.backup",
    "RestoreReport": "kilowatt.ops.restore",
    "restore_backup": "kilowatt.ops.restore",
    "verify_backup": "kilowatt.ops.restore",
}


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'kilowatt.ops' has no attribute {name!r}")
    return getattr(import_module(module), name)
