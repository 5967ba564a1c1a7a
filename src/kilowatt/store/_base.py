"""State and helpers shared by the store's concept modules (runs, registry, jobs, ...)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

from kilowatt.store.audit import APPENDED_KEY, append_event
from kilowatt.store.audit_witness import AuditWitness, WitnessedHead

__all__ = ["StoreBase", "dumps", "loads"]


def dumps(value: Any) -> str:
    """Canonical JSON text for JSON-valued columns."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def loads(text: str | None) -> Any:
    """The value of a JSON-valued column (None stays None)."""
    return None if text is None else json.loads(text)


class StoreBase:
    """The engine, the artifact location, the acting user and the audit chain's key and
    witness, shared by every concept."""

    def __init__(
        self,
        engine: sa.Engine,
        *,
        artifacts_url: str,
        actor: str,
        audit_key: bytes,
        witness: AuditWitness | None = None,
    ) -> None:
        self._engine = engine
        self._artifacts_url = artifacts_url
        self._actor = actor
        self._audit_key = audit_key
        self._witness = witness

    @property
    def actor(self) -> str:
        """Who the audit log names for operations through this store."""
        return self._actor

    @property
    def url(self) -> str:
        """The database URL, password hidden."""
        return self._engine.url.render_as_string(hide_password=True)

    @property
    def artifacts_url(self) -> str:
        """The fsspec URL artifacts are stored under."""
        return self._artifacts_url

    @contextmanager
    def _write(self) -> Iterator[sa.Connection]:
        """One transaction: committed on success, rolled back on any error.

        Audit heads it appended go to the witness only after the commit, so the witness
        never records an event the database does not have.
        """
        appended: list[WitnessedHead] = []
        with self._engine.begin() as connection:
            connection.info[APPENDED_KEY] = appended
            try:
                yield connection
            finally:
                # info lives on the pooled DBAPI connection: never leave the list behind
                connection.info.pop(APPENDED_KEY, None)
        if self._witness is not None:
            self._witness.export_committed(appended)

    def _audit(self, connection: sa.Connection, action: str, target: str, **details: Any) -> int:
        return append_event(connection, self._audit_key, self._actor, action, target, details)

    def record_audit(self, action: str, target: str, **details: Any) -> int:
        """Append an audit event by itself (for writes recorded elsewhere, e.g. an API
        upload); return its sequence number."""
        with self._write() as connection:
            return self._audit(connection, action, target, **details)
