"""Database engines and migrations: SQLite in WAL mode, or any SQLAlchemy URL.

SQLite write transactions start with ``BEGIN IMMEDIATE``: a transaction that reads and then
writes (the audit chain, alias moves, job claims) takes the write lock up front and waits for
it (busy timeout) instead of failing when another process wrote in between.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

import kilowatt
from kilowatt.errors import SpecError, StoreError

__all__ = ["SQLITE_BUSY_TIMEOUT_S", "create_store_engine", "migrate", "schema_revision"]

SQLITE_BUSY_TIMEOUT_S = 60.0
_MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# PostgreSQL advisory lock key held while migrating ("kwmigrat" as bytes).
_PG_MIGRATION_LOCK = 0x6B776D6967726174


def create_store_engine(url: str) -> sa.Engine:
    """An engine for ``url``, with SQLite set up for several processes writing at once."""
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        raise StoreError(
            f"store URL {url!r} is not a SQLAlchemy URL; use e.g. sqlite:///path/kilowatt.db "
            "or postgresql+psycopg://user@host/db"
        ) from None
    engine = _sqlite_engine(parsed) if parsed.get_backend_name() == "sqlite" else None
    if engine is None:
        engine = sa.create_engine(parsed, pool_pre_ping=True)
    sa.event.listen(engine, "before_cursor_execute", _refuse_nul_text)
    return engine


def _sqlite_engine(parsed: sa.URL) -> sa.Engine:
    connect_args: dict[str, Any] = {"timeout": SQLITE_BUSY_TIMEOUT_S}
    if parsed.database in (None, "", ":memory:"):
        # one shared connection, or each thread (the metric flusher) would see its own
        # empty in-memory database
        connect_args["check_same_thread"] = False
        engine = sa.create_engine(parsed, connect_args=connect_args, poolclass=sa.StaticPool)
    else:
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(parsed, connect_args=connect_args)
    sa.event.listen(engine, "connect", _sqlite_on_connect)
    sa.event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _refuse_nul_text(
    _connection: Any, _cursor: Any, _statement: str, parameters: Any, *_: Any
) -> None:
    """PostgreSQL cannot hold a NUL character in text (SQLite would): refuse it on both,
    naming the value, before the database answers with an internal error."""
    bad = _first_nul_text(parameters)
    if bad is not None:
        raise SpecError(
            f"text {bad[:80]!r} contains a NUL character (\\x00), which the store cannot "
            "hold; remove it"
        )


def _first_nul_text(parameters: Any) -> str | None:
    if isinstance(parameters, str):
        return parameters if "\x00" in parameters else None
    values = parameters.values() if isinstance(parameters, dict) else parameters
    if isinstance(values, list | tuple) or isinstance(parameters, dict):
        for value in values:
            found = _first_nul_text(value)
            if found is not None:
                return found
    return None


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take transaction control from the sqlite3 module so "begin" below decides the mode.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
    # NORMAL is durable across process crashes in WAL mode; only an OS crash may lose the
    # last commits, and the database never corrupts.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_on_begin(connection: sa.Connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS_DIR))
    return config


def schema_revision(engine: sa.Engine) -> str | None:
    """The revision the database is at, or None for an empty database."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def migrate(engine: sa.Engine, revision: str = "head", *, audit_key: bytes | None = None) -> str:
    """Upgrade the database to ``revision`` (default: this kilowatt's newest); return it.

    Args:
        audit_key: the audit chain's HMAC key, for the migration that keys an existing
            chain; default ``load_audit_key`` for the environment's ``KILOWATT_HOME``.

    Raises:
        StoreError: the database was written by a newer kilowatt (an unknown revision).
        AuditTampered: the unkeyed chain being keyed does not verify.
    """
    config = _alembic_config()
    script = ScriptDirectory.from_config(config)
    head = script.get_current_head() if revision == "head" else revision
    assert head is not None, "the migrations folder has no revisions"
    current = schema_revision(engine)
    if current == head:
        return head
    _refuse_unknown(current, script, engine)
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(
                sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK}
            )
        config.attributes["connection"] = connection
        config.attributes["audit_key"] = audit_key
        command.upgrade(config, head)
    return head


def _refuse_unknown(current: str | None, script: ScriptDirectory, engine: sa.Engine) -> None:
    known = {revision.revision for revision in script.walk_revisions()}
    if current is not None and current not in known:
        raise StoreError(
            f"the store at {engine.url.render_as_string(hide_password=True)} is at schema "
            f"revision {current!r}, which kilowatt {kilowatt.__version__} does not know: it was "
            "written by a newer kilowatt. Upgrade kilowatt (pip install -U kilowatt) to open it."
        )
