"""Opening a store migrates it; a store from a newer kilowatt is refused clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from kilowatt.errors import StoreError
from kilowatt.store import open_store
from kilowatt.store._engine import schema_revision


def test_open_creates_the_schema_and_reopening_keeps_data(store_url: str, tmp_path: Path) -> None:
    with open_store(url=store_url, artifacts_url=str(tmp_path / "a")) as store:
        assert schema_revision(store.engine) == "0001"
        run = store.create_run("keep")
    with open_store(url=store_url, artifacts_url=str(tmp_path / "a")) as store:
        assert store.get_run(run.id).project == "keep"
        tables = set(sa.inspect(store.engine).get_table_names())
    assert {"runs", "metrics", "audit_events", "api_tokens", "jobs", "alembic_version"} <= tables


def test_a_store_from_a_newer_kilowatt_is_refused(store_url: str, tmp_path: Path) -> None:
    with open_store(url=store_url) as store, store.engine.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(StoreError, match=r"schema revision '9999'.*newer kilowatt.*Upgrade"):
        open_store(url=store_url)


def test_sqlite_store_uses_wal_mode(tmp_path: Path) -> None:
    with open_store(url=f"sqlite:///{tmp_path / 'kw.db'}") as store, store.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_a_bad_url_says_what_a_url_looks_like() -> None:
    with pytest.raises(StoreError, match="'not a url' is not a SQLAlchemy URL"):
        open_store(url="not a url")
