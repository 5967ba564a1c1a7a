"""The store commands, run in-process against the test's own KILOWATT_HOME."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

import kilowatt
from kilowatt.cli.main import main
from kilowatt.store import Store, open_store


@pytest.fixture
def store() -> Store:
    opened = open_store()  # the KILOWATT_HOME the autouse fixture set
    yield opened  # type: ignore[misc]
    opened.close()


def _run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _model(store: Store, tmp_path: Path) -> str:
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"weights")
    with kilowatt.start_run(project="cli", params={"lr": 0.1}, store=store) as run:
        run.log_dataset("mnist", version="2", fingerprint="ab" * 32)
        run.log_metrics({"loss": 0.25}, step=3)
    kilowatt.register_model("digits", run=run, artifact=weights)
    return run.id


def test_runs_list_show_and_compare(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = _model(store, tmp_path)
    with kilowatt.start_run(project="cli", params={"lr": 0.2}, store=store) as other:
        other.log_metrics({"loss": 0.5}, step=3)
    code, out, _ = _run_cli(capsys, "runs", "list", "--project", "cli", "--metric", "loss<0.3")
    assert code == 0 and first[:12] in out and other.id[:12] not in out
    code, out, _ = _run_cli(capsys, "runs", "show", first[:8])
    assert code == 0 and "lr" in out and "0.25" in out and "model.pt" in out
    code, out, _ = _run_cli(capsys, "runs", "compare", first, other.id)
    marked = [line for line in out.splitlines() if "│ * │" in line]  # rows that differ
    assert code == 0
    assert any("param lr" in line and "0.1" in line and "0.2" in line for line in marked)
    assert any("metric loss" in line and "0.25" in line for line in marked)
    assert not any("status" in line for line in marked)  # both finished


def test_bad_input_exits_1_with_the_reason(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run_cli(capsys, "runs", "show", "0000000000")
    assert code == 1 and "no run '0000000000'" in err
    code, _, err = _run_cli(capsys, "runs", "list", "--metric", "loss~1")
    assert code == 1 and "must look like KEY<NUMBER" in err
    code, _, err = _run_cli(capsys, "models", "alias", "digits", "Prod", "1")
    assert code == 1 and "alias 'Prod' is invalid" in err


def test_models_alias_delete_and_lineage_tree(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_id = _model(store, tmp_path)
    code, out, _ = _run_cli(capsys, "models", "alias", "digits", "production", "1")
    assert (code, out.strip()) == (0, "digits@production: (new) -> 1")
    code, out, _ = _run_cli(capsys, "models", "list")
    assert code == 0 and "digits" in out and "production" in out
    code, out, _ = _run_cli(capsys, "lineage", "digits@production")
    assert code == 0
    assert out.splitlines()[0] == "model digits:1"
    assert f"run run-{run_id[:8]}" in out and "dataset mnist:2" in out
    code, _, err = _run_cli(capsys, "models", "delete", "digits:1")
    assert code == 1 and "has dependents: alias:digits@production" in err
    code, out, _ = _run_cli(capsys, "models", "delete", "digits:1", "--force")
    assert code == 0 and "also removed: alias:digits@production" in out
    code, out, _ = _run_cli(capsys, "audit", "list", "--action", "model.delete")
    assert code == 0 and "force=True" in out


def test_audit_verify_passes_then_names_the_tampered_event(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    store.finish_run(store.create_run("audit").id)
    code, out, _ = _run_cli(capsys, "audit", "verify")
    assert (code, out.strip()) == (0, "audit log OK: 3 events, HMAC chain intact")
    with store.engine.begin() as connection:
        connection.execute(sa.text("UPDATE audit_events SET target = 'run:x' WHERE seq = 2"))
    code, _, err = _run_cli(capsys, "audit", "verify")
    assert code == 1 and "audit event 2:" in err and "was edited" in err


def test_audit_verify_against_a_witness_catches_a_cut_tail(
    store: Store, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    store.finish_run(store.create_run("audit").id)
    witness = str(tmp_path / "witness")
    code, out, _ = _run_cli(capsys, "audit", "export-head", "--witness", witness)
    assert code == 0 and out.startswith("exported audit head: event 3 ")
    code, out, _ = _run_cli(capsys, "audit", "verify", "--witness", witness)
    assert (code, out.strip()) == (
        0,
        "audit log OK: 3 events, HMAC chain intact, 1 witnessed heads match",
    )
    with store.engine.begin() as connection:  # cut event 3 and make the head agree
        connection.execute(sa.text("DELETE FROM audit_events WHERE seq = 3"))
        connection.execute(
            sa.text(
                "UPDATE audit_head SET seq = 2, "
                "hash = (SELECT hash FROM audit_events WHERE seq = 2)"
            )
        )
    code, out, _ = _run_cli(capsys, "audit", "verify")
    assert code == 0  # the database alone cannot tell
    code, _, err = _run_cli(capsys, "audit", "verify", "--witness", witness)
    assert code == 1 and "audit event 3: the log ends at event 2 but the witness recorded" in err


def test_store_migrate_reports_the_revision(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run_cli(capsys, "store", "migrate")
    assert code == 0 and out.strip().endswith("is at schema revision 0004")
