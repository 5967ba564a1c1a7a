"""State and helpers shared by the store's concept modules (runs, registry, jobs, ...)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

from kilowatt.store.audit import append_event

__all__ = ["StoreBase", "dumps", "loads"]


def dumps(value: Any) -> str:
    """Canonical JSON text for JSON-valued columns."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def loads(text: str | None) -> Any:
    """The value of a JSON-valued column (None stays None)."""
    return None if text is None else json.loads(text)


class StoreBase:
    """The engine, the artifact location and the acting user, shared by every concept."""

    def __init__(self, engine: sa.Engine, *, artifacts_url: str, actor: str) -> None:
        self._engine = engine
        self._artifacts_url = artifacts_url
        self._actor = actor

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
        """One transaction: committed on success, rolled back on any error."""
        with self._engine.begin() as connection:
            yield connection

    def _audit(self, connection: sa.Connection, action: str, target: str, **details: Any) -> int:
        return append_event(connection, self._actor, action, target, details)
