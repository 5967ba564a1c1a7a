"""``Store``: the tracking store over one database and one artifact location."""

from __future__ import annotations

from types import TracebackType

import sqlalchemy as sa

from kilowatt.spec.settings import Settings
from kilowatt.store._engine import create_store_engine, migrate
from kilowatt.store.artifacts import ArtifactsMixin
from kilowatt.store.audit import AuditMixin
from kilowatt.store.audit_key import load_audit_key
from kilowatt.store.audit_witness import AuditWitness
from kilowatt.store.datasets import DatasetsMixin
from kilowatt.store.gates import GatesMixin
from kilowatt.store.jobs import JobsMixin
from kilowatt.store.metrics import MetricsMixin
from kilowatt.store.registry import RegistryMixin
from kilowatt.store.tokens import TokensMixin

__all__ = ["Store", "open_store"]


class Store(
    GatesMixin,
    RegistryMixin,
    DatasetsMixin,
    ArtifactsMixin,
    MetricsMixin,
    AuditMixin,
    TokensMixin,
    JobsMixin,
):
    """Runs, metrics, artifacts, datasets, models, deployments, lineage, audit, tokens, jobs.

    Open one with ``open_store()``; it is safe to share between threads. Every mutating
    operation that matters to governance appends an audit event naming ``actor``.

    >>> store = open_store(url="sqlite://")  # doctest: +SKIP
    >>> run = store.create_run("demo", params={"lr": 0.1})  # doctest: +SKIP
    """

    def as_actor(self, actor: str) -> Store:
        """The same store, auditing operations as ``actor`` (e.g. an API token's name)."""
        return Store(
            self._engine,
            artifacts_url=self._artifacts_url,
            actor=actor,
            audit_key=self._audit_key,
            witness=self._witness,
        )

    @property
    def engine(self) -> sa.Engine:
        """The SQLAlchemy engine (for tools and tests that need SQL)."""
        return self._engine

    def close(self) -> None:
        """Close the database connections."""
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def open_store(
    settings: Settings | None = None,
    *,
    url: str | None = None,
    artifacts_url: str | None = None,
    actor: str | None = None,
) -> Store:
    """Open (creating and migrating as needed) the store named by ``settings``.

    Args:
        settings: where the store lives and who acts; default ``Settings.from_env()``.
        url: a SQLAlchemy URL overriding ``settings.store_url``.
        artifacts_url: an fsspec URL overriding ``settings.artifacts_url``.
        actor: who the audit log names; default ``settings.user``.

    The audit chain's HMAC key is read (or on first use created) as
    ``kilowatt.store.audit_key.load_audit_key`` describes, and the head is exported to
    ``settings.audit_witness_url`` every ``settings.audit_witness_every`` events.

    Raises:
        StoreError: the database was written by a newer kilowatt, or the URL is invalid.
        AuditKeyError: the audit key is too short or its file readable by others.

    >>> store = open_store()  # doctest: +SKIP
    >>> [run.name for run in store.list_runs("demo")]  # doctest: +SKIP
    """
    settings = settings or Settings.from_env()
    audit_key = load_audit_key(settings.home)
    witness = None
    if settings.audit_witness_url:
        witness = AuditWitness(settings.audit_witness_url, settings.audit_witness_every)
    engine = create_store_engine(url or settings.store_url)
    try:
        migrate(engine, audit_key=audit_key)
    except BaseException:
        engine.dispose()
        raise
    return Store(
        engine,
        artifacts_url=artifacts_url or settings.artifacts_url,
        actor=actor or settings.user,
        audit_key=audit_key,
        witness=witness,
    )
