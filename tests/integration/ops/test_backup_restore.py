"""``kilowatt backup`` / ``restore``: a filled home survives being deleted, on SQLite and
PostgreSQL; damaged, interrupted or foreign backups are refused and leave the home alone."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from kilowatt.cli.main import main
from kilowatt.errors import BackupError
from kilowatt.ops.database import scratch_postgres
from kilowatt.ops.repository import BackupRepository
from kilowatt.spec import Settings
from kilowatt.store import Store, open_store, register_model, start_run

PG_URL = os.environ.get("KILOWATT_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture
def key_off_the_host(clean_environment: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The audit key kept outside the home (as the README advises): losing the disk loses
    the home, not the key."""
    monkeypatch.setenv("KILOWATT_AUDIT_KEY", "an audit key kept off this machine, 32+ chars")
    return clean_environment


def _fill(home: Path, work: Path) -> None:
    """Two real runs with params, metrics, artifacts and checkpoints; a model; a deployment."""
    settings = Settings.from_env()
    work.mkdir(exist_ok=True)
    for index, name in enumerate(("baseline", "wider")):
        params = {"lr": 0.1 / (index + 1), "checkpoint": {"url": None, "every": "10"}}
        with start_run("mnist", name=name, params=params, tags={"team": "a"}) as run:
            for step in range(25):
                run.log_metrics({"loss": 1.0 / (step + 1 + index), "acc": step / 25}, step=step)
            weights = work / f"{name}.pt"
            weights.write_bytes(bytes(range(256)) * (index + 3))
            run.log_artifact(weights, "model.pt")
            run.log_artifact(work / "baseline.pt" if index else weights, "shared.pt")
            checkpoint = settings.home / "checkpoints" / name / "step-20"
            checkpoint.mkdir(parents=True)
            (checkpoint / "state.pt").write_bytes(f"state of {name}".encode() * 100)
            if index == 1:
                version = register_model(
                    "digits", run=run, artifact="model.pt", aliases=["production"]
                )
    with open_store(settings) as store:
        store.create_deployment(version.ref, "http://127.0.0.1:8080/v2/models/digits", "running")
    (home / "calibration.json").write_text('{"cpu": {"flops_scale": 0.5}}')


def _contents(store: Store, settings: Settings) -> dict[str, Any]:
    """Everything a user reads back: runs, metrics, artifacts' bytes, models, lineage."""
    runs = sorted(store.list_runs(limit=1000), key=lambda run: run.id)
    metrics = {}
    for run in runs:
        for key in store.metric_keys(run.id):
            history = store.metric_history(run.id, key)
            metrics[(run.id, key)] = (history.step.tolist(), history.value.tolist())
    artifacts = {}
    for run in runs:
        for artifact in store.list_artifacts(run.id):
            with store.open_artifact(run.id, artifact.name) as handle:
                artifacts[(run.id, artifact.name)] = (artifact, handle.read())
    versions = store.list_model_versions()
    checkpoints = {
        path.relative_to(settings.home).as_posix(): path.read_bytes()
        for path in (settings.home / "checkpoints").rglob("*")
        if path.is_file()
    }
    return {
        "runs": [dataclasses.asdict(run) for run in runs],
        "metrics": metrics,
        "artifacts": artifacts,
        "versions": versions,
        "lineage": [store.lineage_of(version) for version in versions],
        "deployments": store.list_deployments(),
        "audit": store.list_audit(limit=10_000),
        "checkpoints": checkpoints,
        "calibration": (settings.home / "calibration.json").read_text(),
    }


def _read(settings: Settings) -> dict[str, Any]:
    with open_store(settings) as store:
        return _contents(store, settings)


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _objects(url: Path) -> list[Path]:
    return sorted(p for p in (url / "objects").rglob("*") if p.is_file())


def _roundtrip(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], drop: Any) -> None:
    settings = Settings.from_env()
    _fill(home, tmp_path / "work")
    before = _read(settings)
    target = tmp_path / "backups"
    code, out = _cli(capsys, "backup", str(target))
    assert code == 0, out
    assert "copied" in out
    shutil.rmtree(home)
    drop()
    code, out = _cli(capsys, "restore", str(target))
    assert code == 0, out
    code, out = _cli(capsys, "audit", "verify")
    assert code == 0, out
    assert "HMAC chain intact" in out
    after = _read(settings)
    assert after == before
    assert len(after["runs"]) == 2 and len(after["metrics"]) == 4
    assert after["deployments"][0].status == "running"


def test_a_deleted_sqlite_home_is_restored_identically(
    key_off_the_host: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _roundtrip(key_off_the_host, tmp_path, capsys, drop=lambda: None)


def test_a_lost_home_without_its_audit_key_is_not_restored_unverified(
    clean_environment: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fill(clean_environment, tmp_path / "work")
    assert _cli(capsys, "backup", str(tmp_path / "backups"))[0] == 0
    shutil.rmtree(clean_environment)  # the key file was in the home
    code, out = _cli(capsys, "restore", str(tmp_path / "backups"))
    assert code == 1
    assert "no audit key to verify the backup's audit chain" in out
    assert "KILOWATT_AUDIT_KEY" in out and "--include-audit-key" in out
    assert not clean_environment.exists()  # nothing restored unverified


@pytest.mark.postgres
def test_a_dropped_postgresql_store_is_restored_identically(
    pg_database_url: str,
    key_off_the_host: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("KILOWATT_STORE_URL", pg_database_url)
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    name = sa.make_url(pg_database_url).database

    def drop_and_recreate() -> None:
        with admin.connect() as connection:
            connection.exec_driver_sql(f"DROP DATABASE {name} WITH (FORCE)")
            connection.exec_driver_sql(f"CREATE DATABASE {name}")

    try:
        _roundtrip(key_off_the_host, tmp_path, capsys, drop=drop_and_recreate)
        # a second restore over the now-filled database is refused without --force
        shutil.rmtree(key_off_the_host)
        code, out = _cli(capsys, "restore", str(tmp_path / "backups"))
        assert code == 1
        assert "already holds a kilowatt store" in out
    finally:
        admin.dispose()


@pytest.mark.postgres
def test_a_schema_store_refuses_a_newer_backup_untouched_then_restores_an_older_one(
    pg_schema: str,
    clean_environment: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store_url = f"{PG_URL}?options=-csearch_path%3D{pg_schema}"
    monkeypatch.setenv("KILOWATT_STORE_URL", store_url)
    settings = Settings.from_env()
    _fill(clean_environment, tmp_path / "work")
    before = _read(settings)
    target = tmp_path / "backups"
    assert _cli(capsys, "backup", str(target))[0] == 0
    good = BackupRepository(str(target)).snapshots()[-1]
    engine = sa.create_engine(store_url)
    with engine.begin() as connection:
        connection.exec_driver_sql("UPDATE alembic_version SET version_num = '9999_future'")
    assert _cli(capsys, "backup", str(target))[0] == 0  # a "newer kilowatt" wrote this one
    with engine.begin() as connection:
        connection.exec_driver_sql("DELETE FROM tags")  # the store moves on after the backup
    code, out = _cli(capsys, "restore", "--force", str(target))
    assert code == 1
    assert "written by a newer kilowatt" in out
    with engine.connect() as connection:  # checked in a scratch database: the store is as it was
        assert connection.exec_driver_sql("SELECT count(*) FROM tags").scalar_one() == 0
        version = connection.exec_driver_sql("SELECT version_num FROM alembic_version")
        assert version.scalar_one() == "9999_future"
    engine.dispose()
    code, out = _cli(capsys, "restore", "--force", "--snapshot", good, str(target))
    assert code == 0, out
    assert _read(settings) == before


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A fresh PostgreSQL schema in the test database, dropped afterwards."""
    name = f"kw_backup_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f"CREATE SCHEMA {name}")
    except sa.exc.OperationalError as error:
        admin.dispose()
        _unavailable(error)
    try:
        yield name
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f"DROP SCHEMA IF EXISTS {name} CASCADE")
        admin.dispose()


def _unavailable(error: Exception) -> None:
    problem = f"PostgreSQL is not reachable at {PG_URL}: {str(error).splitlines()[0]}"
    if os.environ.get("CI") == "true":
        pytest.fail(problem)
    pytest.skip(problem)


@pytest.fixture
def backed_up(clean_environment: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A filled home and the folder holding one complete backup of it."""
    _fill(clean_environment, tmp_path / "work")
    target = tmp_path / "backups"
    assert _cli(capsys, "backup", str(target))[0] == 0
    return target


def test_a_second_backup_copies_only_what_changed(
    backed_up: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    objects_before = _objects(backed_up)
    with start_run("mnist", name="third") as run:
        run.log_metrics({"loss": 0.5}, step=1)
    code, out = _cli(capsys, "backup", str(backed_up))
    assert code == 0, out
    # only the database changed: artifacts and checkpoints are already stored by content
    assert "1 copied" in out
    assert len(_objects(backed_up)) == len(objects_before) + 1
    assert len(BackupRepository(str(backed_up)).snapshots()) == 2
    code, out = _cli(capsys, "backup", "--verify", str(backed_up))
    assert code == 0, out
    assert "audit chain of" in out


def test_a_tampered_object_fails_verify_naming_it(
    backed_up: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = BackupRepository(str(backed_up)).read_manifest()
    checkpoint = next(item for item in manifest.objects if item.kind == "checkpoint")
    stored = backed_up / "objects" / checkpoint.sha256[:2] / checkpoint.sha256
    stored.write_bytes(b"flipped" + stored.read_bytes()[7:])
    code, out = _cli(capsys, "backup", "--verify", str(backed_up))
    assert code == 1
    assert f"checkpoint {checkpoint.name!r}" in out
    assert "corrupt" in out


def test_a_failed_restore_leaves_the_existing_home_untouched(
    backed_up: Path, clean_environment: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings.from_env()
    before = _read(settings)
    manifest = BackupRepository(str(backed_up)).read_manifest()
    artifact = next(item for item in manifest.objects if item.kind == "artifact")
    (backed_up / "objects" / artifact.sha256[:2] / artifact.sha256).write_bytes(b"garbage")
    with start_run("mnist", name="after-the-backup"):
        pass
    code, out = _cli(capsys, "restore", "--force", str(backed_up))
    assert code == 1
    assert "corrupt" in out
    after = _read(settings)
    assert [run["name"] for run in after["runs"]] != [run["name"] for run in before["runs"]]
    assert "after-the-backup" in {run["name"] for run in after["runs"]}
    assert sorted(p.name for p in clean_environment.parent.iterdir()) == sorted(
        ["kilowatt-home", "work", "backups"]
    )  # no staging folder left behind


def test_a_snapshot_missing_an_artifact_the_store_references_fails_verify(
    backed_up: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repository = BackupRepository(str(backed_up))
    manifest = repository.read_manifest()
    kept = tuple(item for item in manifest.objects if item.kind != "artifact")
    repository.write_manifest(dataclasses.replace(manifest, snapshot="z-incomplete", objects=kept))
    code, out = _cli(capsys, "backup", "--verify", str(backed_up))
    assert code == 1
    assert "artifact 'model.pt' of run" in out and "is not in the backup" in out


def test_restore_over_a_non_empty_home_needs_force(
    backed_up: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with start_run("mnist", name="newer"):
        pass
    code, out = _cli(capsys, "restore", str(backed_up))
    assert code == 1
    assert "is not empty" in out and "--force" in out
    assert "newer" in {run["name"] for run in _read(Settings.from_env())["runs"]}
    code, out = _cli(capsys, "restore", "--force", str(backed_up))
    assert code == 0, out
    assert "newer" not in {run["name"] for run in _read(Settings.from_env())["runs"]}


def test_a_backup_killed_midway_is_refused_by_restore(
    clean_environment: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _fill(clean_environment, tmp_path / "work")
    real_put = BackupRepository.put_object
    calls = iter(range(1_000))

    def dies_on_the_third_object(self: BackupRepository, source: Path, sha256: str) -> bool:
        if next(calls) == 2:
            raise KeyboardInterrupt  # what Ctrl-C or a kill signal handler delivers
        return real_put(self, source, sha256)

    monkeypatch.setattr(BackupRepository, "put_object", dies_on_the_third_object)
    target = tmp_path / "backups"
    assert main(["backup", str(target)]) == 130  # interrupted, as by Ctrl-C
    monkeypatch.undo()
    assert len(_objects(target)) == 2  # objects were copied ...
    shutil.rmtree(clean_environment)
    code, out = _cli(capsys, "restore", str(target))  # ... but nothing looks complete
    assert code == 1
    assert "interrupted" in out
    assert not clean_environment.exists()
    code, out = _cli(capsys, "backup", "--verify", str(target))
    assert code == 1 and "no complete snapshot" in out


def test_a_backup_from_a_newer_kilowatt_is_refused(
    backed_up: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    snapshots = backed_up / "snapshots"
    manifest_path = next(snapshots.glob("*.json"))
    body = json.loads(manifest_path.read_text())
    body["format"], body["kilowatt_version"] = 99, "9.0.0"
    manifest_path.write_text(json.dumps(body))
    code, out = _cli(capsys, "restore", "--force", str(backed_up))
    assert code == 1
    assert "written by kilowatt 9.0.0" in out and "Upgrade kilowatt" in out


def test_a_store_from_a_newer_schema_is_refused_and_the_home_kept(
    clean_environment: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fill(clean_environment, tmp_path / "work")
    settings = Settings.from_env()
    with open_store(settings) as store, store.engine.begin() as connection:
        connection.exec_driver_sql("UPDATE alembic_version SET version_num = '9999_future'")
    assert _cli(capsys, "backup", str(tmp_path / "backups"))[0] == 0
    marker = clean_environment / "catalog" / "mine.yaml"
    marker.parent.mkdir()
    marker.write_text("accelerators: []")
    code, out = _cli(capsys, "restore", "--force", str(tmp_path / "backups"))
    assert code == 1
    assert "written by a newer kilowatt" in out
    assert marker.read_text() == "accelerators: []"


def test_an_edited_manifest_is_refused(backed_up: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest_path = next((backed_up / "snapshots").glob("*.json"))
    body = json.loads(manifest_path.read_text())
    body["objects"] = body["objects"][1:]
    manifest_path.write_text(json.dumps(body))
    code, out = _cli(capsys, "backup", "--verify", str(backed_up))
    assert code == 1
    assert "does not match its recorded hash" in out


def test_an_unreachable_target_is_a_clear_error(
    clean_environment: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fill(clean_environment, tmp_path / "work")
    # port 1 on the loopback: nothing listens, the connection is refused at once
    code, out = _cli(capsys, "backup", "ftp://127.0.0.1:1/backups")
    assert code == 1
    assert "backup target 'ftp://127.0.0.1:1/backups' is unreachable" in out


def test_the_audit_key_stays_out_of_a_backup_unless_asked_for(
    clean_environment: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = clean_environment / "audit.key"
    clean_environment.mkdir()
    key.write_bytes(b"k" * 32)
    key.chmod(0o600)
    _fill(clean_environment, tmp_path / "work")
    assert _cli(capsys, "backup", str(tmp_path / "plain"))[0] == 0
    assert _cli(capsys, "backup", "--include-audit-key", str(tmp_path / "keyed"))[0] == 0
    kinds = {
        name: {item.name for item in BackupRepository(str(tmp_path / name)).read_manifest().objects}
        for name in ("plain", "keyed")
    }
    assert "audit.key" not in kinds["plain"]
    assert "audit.key" in kinds["keyed"]
    # a restore over this home keeps the key it verifies with
    assert _cli(capsys, "restore", "--force", str(tmp_path / "plain"))[0] == 0
    assert key.read_bytes() == b"k" * 32


@pytest.fixture
def pg_database_url() -> Iterator[str]:
    """A fresh PostgreSQL database, dropped afterwards (pg_dump copies whole databases)."""
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(scratch_postgres(PG_URL))
        except BackupError as error:
            _unavailable(error)
        yield url


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An S3-compatible endpoint (moto's server) on 127.0.0.1 with one bucket, ``backups``."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for name, value in {
        "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint,
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    try:
        import fsspec

        fsspec.filesystem("s3", skip_instance_cache=True).mkdir("backups")
        yield endpoint
    finally:
        server.stop()


@pytest.mark.slow
def test_a_home_round_trips_through_an_s3_bucket(
    s3_endpoint: str,
    key_off_the_host: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = Settings.from_env()
    _fill(key_off_the_host, tmp_path / "work")
    before = _read(settings)
    assert _cli(capsys, "backup", "s3://backups/kilowatt")[0] == 0
    code, out = _cli(capsys, "backup", "s3://backups/kilowatt")
    assert code == 0, out
    assert "0 copied" in out  # nothing changed: every object is already in the bucket
    shutil.rmtree(key_off_the_host)
    code, out = _cli(capsys, "restore", "s3://backups/kilowatt")
    assert code == 0, out
    assert _read(settings) == before
