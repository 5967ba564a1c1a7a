"""The store suite runs against SQLite and PostgreSQL (127.0.0.1:5432, database ``test``).

Each PostgreSQL test gets its own schema (via ``search_path``), dropped afterwards, so tests
never see one another's rows. Set ``KILOWATT_TEST_PG_URL`` to point elsewhere.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from kilowatt.store import Store, open_store

PG_URL = os.environ.get("KILOWATT_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@functools.cache
def _pg_problem() -> str | None:
    engine = sa.create_engine(PG_URL)
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
    except Exception as error:  # any failure means "not available here"
        return f"PostgreSQL is not reachable at {PG_URL}: {str(error).splitlines()[0]}"
    finally:
        engine.dispose()
    return None


@pytest.fixture
def pg_schema_url() -> Iterator[str]:
    """A URL whose connections use a fresh, private PostgreSQL schema."""
    problem = _pg_problem()
    if problem:
        pytest.skip(problem)
    schema = f"kw_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_URL)
    with admin.begin() as connection:
        connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            connection.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The database URL of the backend under test."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'kilowatt.db'}"
    return str(request.getfixturevalue("pg_schema_url"))


@pytest.fixture
def store(store_url: str, tmp_path: Path) -> Iterator[Store]:
    """An open, migrated store acting as ``tester``."""
    opened = open_store(url=store_url, artifacts_url=str(tmp_path / "artifacts"), actor="tester")
    try:
        yield opened
    finally:
        opened.close()
