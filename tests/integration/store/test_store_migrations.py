"""Opening a store migrates it; a store from a newer kilowatt is refused clearly."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import sqlalchemy as sa

from kilowatt.errors import StoreError
from kilowatt.store import open_store
from kilowatt.store._engine import create_store_engine, migrate, schema_revision


def test_open_creates_the_schema_and_reopening_keeps_data(store_url: str, tmp_path: Path) -> None:
    with open_store(url=store_url, artifacts_url=str(tmp_path / "a")) as store:
        assert schema_revision(store.engine) == "0004"
        run = store.create_run("keep")
    with open_store(url=store_url, artifacts_url=str(tmp_path / "a")) as store:
        assert store.get_run(run.id).project == "keep"
        tables = set(sa.inspect(store.engine).get_table_names())
    assert {
        "runs",
        "metric_chunks",
        "audit_events",
        "api_tokens",
        "jobs",
        "alembic_version",
    } <= tables


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


def test_points_logged_before_metric_chunks_survive_the_upgrade(store_url: str) -> None:
    engine = create_store_engine(store_url)
    try:
        assert migrate(engine, "0001") == "0001"
        with engine.begin() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO metrics (run_id, key, step, writer, time, value) VALUES "
                    "('r1', 'loss', 1, 'w', 11.0, 0.5), ('r1', 'loss', 0, 'w', 10.0, NULL), "
                    "('r1', 'loss', 0, 'v', 10.5, 2.0)"
                )
            )
    finally:
        engine.dispose()
    with open_store(url=store_url) as store:
        history = store.metric_history("r1", "loss")
        assert schema_revision(store.engine) == "0004"
    assert history.step.tolist() == [0, 0, 1]
    assert history.time.tolist() == [10.5, 10.0, 11.0]  # step 0: writer v, then w
    assert history.value[0] == 2.0 and math.isnan(history.value[1]) and history.value[2] == 0.5


def test_downgrading_metric_chunks_keeps_the_points(store_url: str) -> None:
    from alembic import command

    from kilowatt.store._engine import _alembic_config

    with open_store(url=store_url) as store:
        run = store.create_run("down")
        store.log_metric_points(run.id, "w", [("loss", 0, 1.0, 0.5), ("loss", 1, 2.0, 0.25)])
        store.log_metric_points(run.id, "w", [("loss", 1, 3.0, 0.125)])  # step 1 again
        config = _alembic_config()
        with store.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, "0001")
        with store.engine.connect() as connection:
            rows = connection.execute(
                sa.text("SELECT step, value FROM metrics ORDER BY step")
            ).all()
    assert [tuple(row) for row in rows] == [(0, 0.5), (1, 0.125)]


def test_jobs_queued_before_job_windows_stay_rigid_after_the_upgrade(store_url: str) -> None:
    engine = create_store_engine(store_url)
    try:
        assert migrate(engine, "0002") == "0002"
        with engine.begin() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO jobs (name, spec, priority, status, attempts, max_attempts, "
                    "time_s, energy_j, cost_usd, carbon_gco2e, cancel_requested, submitted_at, "
                    "updated_at, created_by) VALUES ('old', '{}', 0, 'queued', 0, 1, 0, 0, 0, "
                    "0, false, 1.0, 1.0, 'tester')"
                )
            )
    finally:
        engine.dispose()
    with open_store(url=store_url) as store:
        (job,) = store.list_jobs()
        assert (job.name, job.flexible, job.not_before, job.deadline) == ("old", False, None, None)
        assert store.claim_next_job("w", now=0.0) is not None  # rigid: due at once


def _downgrade(store_url: str, revision: str) -> None:
    from alembic import command

    from kilowatt.store._engine import _alembic_config

    engine = create_store_engine(store_url)
    try:
        config = _alembic_config()
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, revision)
    finally:
        engine.dispose()


def test_an_unkeyed_audit_chain_is_keyed_on_upgrade(store_url: str, tmp_path: Path) -> None:
    from kilowatt.store.audit import unkeyed_event_hash

    with open_store(url=store_url, artifacts_url=str(tmp_path / "a")) as store:
        store.create_run("legacy")
        store.create_token("ci", "viewer")
    _downgrade(store_url, "0003")  # the chain as kilowatt before 0004 wrote it
    engine = create_store_engine(store_url)
    with engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT * FROM audit_events ORDER BY seq")).all()
    engine.dispose()
    assert [r.hash for r in rows] == [
        unkeyed_event_hash(r.seq, r.time, r.actor, r.action, r.target, r.details, r.prev_hash)
        for r in rows
    ]
    with open_store(url=store_url, artifacts_url=str(tmp_path / "a")) as store:
        assert schema_revision(store.engine) == "0004"
        assert store.check_audit() == 3
        assert {e.hash for e in store.list_audit()}.isdisjoint(r.hash for r in rows)


def test_a_tampered_unkeyed_chain_is_not_keyed(store_url: str, tmp_path: Path) -> None:
    from kilowatt.errors import AuditTampered

    with open_store(url=store_url, artifacts_url=str(tmp_path / "a")) as store:
        store.create_run("legacy")
        store.create_token("ci", "viewer")
    _downgrade(store_url, "0003")
    engine = create_store_engine(store_url)
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE audit_events SET actor = 'mallory' WHERE seq = 2"))
    engine.dispose()
    with pytest.raises(AuditTampered, match=r"audit event 2: the unkeyed chain does not verify"):
        open_store(url=store_url, artifacts_url=str(tmp_path / "a"))
    engine = create_store_engine(store_url)
    assert schema_revision(engine) == "0003"  # nothing half-done
    engine.dispose()
