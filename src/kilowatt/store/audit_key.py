"""The secret that keys the audit chain's HMAC, kept outside the database.

The key comes from ``KILOWATT_AUDIT_KEY`` if set, else from ``KILOWATT_HOME/audit.key``,
created on first use with mode 0600. A key file that others may read is refused: whoever
reads the key can rewrite the log undetected. With PostgreSQL, keep the key off the
database host (set the variable, or keep ``KILOWATT_HOME`` elsewhere), so that someone who
controls the database does not hold the key too; every host that writes to the store needs
the same key.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from kilowatt.errors import AuditKeyError

__all__ = ["AUDIT_KEY_ENV", "AUDIT_KEY_FILE", "audit_key_path", "load_audit_key"]

AUDIT_KEY_ENV = "KILOWATT_AUDIT_KEY"
AUDIT_KEY_FILE = "audit.key"
_MIN_KEY_CHARS = 32


def audit_key_path(home: Path) -> Path:
    """Where the key file lives for a ``KILOWATT_HOME``."""
    return home / AUDIT_KEY_FILE


def load_audit_key(home: Path, env: Mapping[str, str] | None = None) -> bytes:
    """The audit HMAC key: ``KILOWATT_AUDIT_KEY``, else ``home/audit.key`` (made on first use).

    Raises:
        AuditKeyError: the key is shorter than 32 characters, its file is readable or
            writable by anyone but its owner, or it cannot be created.

    >>> key = load_audit_key(Path("/tmp/kw"))  # doctest: +SKIP
    """
    env = os.environ if env is None else env
    value = env.get(AUDIT_KEY_ENV)
    if value:
        return _checked(value.encode(), f"{AUDIT_KEY_ENV}")
    path = audit_key_path(home)
    try:
        try:
            return _read_key_file(path)
        except FileNotFoundError:
            return _create_key_file(path)
    except OSError as exc:
        raise AuditKeyError(
            f"cannot read or create the audit key file {path} ({exc.strerror}); set "
            f"{AUDIT_KEY_ENV}, or make KILOWATT_HOME a folder kilowatt can write"
        ) from None


def _checked(key: bytes, where: str) -> bytes:
    if len(key) < _MIN_KEY_CHARS:
        raise AuditKeyError(
            f"the audit key in {where} has {len(key)} characters; use at least "
            f"{_MIN_KEY_CHARS} random ones (e.g. python -c 'import secrets; "
            "print(secrets.token_hex(32))')"
        )
    return key


def _read_key_file(path: Path) -> bytes:
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(descriptor, "rb") as file:
        mode = os.fstat(file.fileno()).st_mode & 0o777
        if mode & 0o077:
            raise AuditKeyError(
                f"the audit key file {path} has mode {mode:o}: others may read or change it; "
                f"run chmod 600 {path} (and consider the log's integrity unproven until then)"
            )
        return _checked(file.read().strip(), str(path))


def _create_key_file(path: Path) -> bytes:
    """Write a fresh key to a private temporary file, then link it into place.

    Linking fails if another process got there first; then its key is the key, so two
    processes starting on an empty home never chain with different keys.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32).encode()
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(key + b"\n")
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return _read_key_file(path)
    finally:
        temporary.unlink(missing_ok=True)
    return key
