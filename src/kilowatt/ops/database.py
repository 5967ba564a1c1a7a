"""Consistent copies of the store's database: SQLite's online backup API, PostgreSQL's tools.

A SQLite copy is taken page by page while writers keep writing (the backup API restarts on
concurrent change and ends with one consistent state) and is left in rollback-journal mode,
so the copy is one self-contained file. A PostgreSQL copy is ``pg_dump --format=custom``,
which reads one snapshot transaction; ``pg_restore --single-transaction`` puts it back all
or nothing. A store confined to one schema (``options=-csearch_path=<schema>`` in its URL)
is dumped and restored as that schema alone.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote

import sqlalchemy as sa

from kilowatt.errors import BackupError

__all__ = [
    "dialect_of",
    "dump_postgres",
    "restore_postgres",
    "scratch_postgres",
    "snapshot_sqlite",
    "sqlite_path",
]


def dialect_of(store_url: str) -> str:
    """``sqlite`` or ``postgresql`` (the only databases a backup knows how to copy).

    Raises:
        BackupError: any other database.
    """
    dialect = sa.make_url(store_url).get_backend_name()
    if dialect not in ("sqlite", "postgresql"):
        raise BackupError(
            f"cannot back up a {dialect!r} store ({store_url}); kilowatt backs up SQLite and "
            "PostgreSQL stores"
        )
    return dialect


def sqlite_path(store_url: str) -> Path:
    """The file of a SQLite store URL.

    Raises:
        BackupError: an in-memory database, which has nothing to back up or restore.
    """
    database = sa.make_url(store_url).database
    if database in (None, "", ":memory:"):
        raise BackupError(f"store {store_url!r} is in memory; back up a file-backed store")
    return Path(database).expanduser()


def snapshot_sqlite(source: Path, destination: Path) -> None:
    """Copy a live SQLite database to ``destination`` with the online backup API."""
    if not source.is_file():
        raise BackupError(
            f"the SQLite store {source} does not exist; check KILOWATT_HOME or KILOWATT_STORE_URL"
        )
    live, copy = sqlite3.connect(source), sqlite3.connect(destination)
    try:
        live.backup(copy)
        # WAL mode would make the copy depend on side files; one file is a better backup.
        copy.execute("PRAGMA journal_mode=DELETE")
    finally:
        copy.close()
        live.close()


def _libpq_args(store_url: str, *, dump: bool = False) -> list[str]:
    """Connection arguments for PostgreSQL's tools, from a SQLAlchemy URL; ``dump`` adds
    the store's schema, if it has its own (a restore then holds just that schema)."""
    url = sa.make_url(store_url)
    options = url.query.get("options")
    options_text = options if isinstance(options, str) else " ".join(options or ())
    plain = url.set(drivername="postgresql", query={})
    args = [f"--dbname={plain.render_as_string(hide_password=False)}"]
    schema = _search_path_schema(unquote(options_text))
    if dump and schema is not None:
        args.append(f"--schema={schema}")
    return args


def _search_path_schema(options: str) -> str | None:
    for option in options.split():
        key, _, value = option.removeprefix("-c").partition("=")
        if key.strip() == "search_path" and value:
            return value.split(",")[0].strip()
    return None


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BackupError(
            f"{name} is not installed; install the PostgreSQL client "
            "(Debian: apt-get install postgresql-client) to back up or restore PostgreSQL"
        )
    return path


def _run(command: list[str], what: str) -> None:
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        detail = completed.stderr.strip().splitlines()
        raise BackupError(f"{what} failed: {' | '.join(detail[-3:]) or completed.returncode}")


def dump_postgres(store_url: str, destination: Path) -> None:
    """``pg_dump`` the store to ``destination`` (custom format, one snapshot transaction)."""
    command = [_tool("pg_dump"), "--format=custom", "--no-owner", "--no-privileges"]
    _run([*command, f"--file={destination}", *_libpq_args(store_url, dump=True)], "pg_dump")


def restore_postgres(dump: Path, store_url: str) -> None:
    """Load a dump into the store's database in one transaction: all of it or nothing.

    Objects the dump holds are dropped first (``--clean``); the caller has checked that the
    target is empty or that the user asked to replace it.
    """
    command = [
        _tool("pg_restore"),
        "--single-transaction",
        "--exit-on-error",
        "--clean",
        "--if-exists",
        "--no-owner",
        "--no-privileges",
    ]
    _run([*command, *_libpq_args(store_url), str(dump)], "pg_restore")


@contextmanager
def scratch_postgres(store_url: str) -> Iterator[str]:
    """A throwaway database beside the store's (same server, same schema options), dropped
    on exit: a dump is checked there before it replaces anything.

    Raises:
        BackupError: the role may not create databases.
    """
    url = sa.make_url(store_url)
    name = f"kilowatt_restore_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sa.exc.DBAPIError as error:
        admin.dispose()
        reason = str(error).splitlines()[0]
        raise BackupError(
            f"cannot create a scratch database to check the backup in ({reason});"
            f" grant CREATEDB to {url.username!r} so a restore can be verified before it "
            "replaces the store"
        ) from None
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()
