"""The audit HMAC chain: what tampering by SQL is caught, with and without a witness.

The attacker here can run any SQL on the database. Without the audit key they can edit,
delete, reorder, cut off or recompute events; each is caught and the first bad event
named. Cutting events off the end together with rewriting the head row, or recomputing
the chain with the key, is caught only by the external witness.
"""

from __future__ import annotations

import itertools
import stat
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from kilowatt.errors import AuditKeyError, AuditTampered
from kilowatt.spec import Settings
from kilowatt.store import Store, open_store
from kilowatt.store.audit import GENESIS_HASH, event_hash, unkeyed_event_hash
from kilowatt.store.audit_key import AUDIT_KEY_ENV, audit_key_path, load_audit_key
from kilowatt.store.audit_witness import AuditWitness


def _five_events(store: Store) -> None:
    run = store.create_run("audit")  # project.create (1), run.create (2)
    store.finish_run(run.id)  # run.finish (3)
    store.create_token("ci", "viewer")  # token.create (4)
    store.submit_job({"cmd": "train"}, name="nightly")  # job.submit (5)


def _sql(store: Store, statement: str) -> None:
    with store.engine.begin() as connection:
        connection.execute(sa.text(statement))


def _recompute(store: Store, formula: Callable[..., str], *, edit_seq: int | None = None) -> None:
    """The attacker's best move: rewrite every hash (and the head) with ``formula``,
    optionally after changing the actor of one event."""
    with store.engine.begin() as connection:
        if edit_seq is not None:
            connection.execute(
                sa.text("UPDATE audit_events SET actor = 'mallory' WHERE seq = :s"), {"s": edit_seq}
            )
        rows = connection.execute(sa.text("SELECT * FROM audit_events ORDER BY seq")).all()
        prev = GENESIS_HASH
        for row in rows:
            fields = (row.seq, row.time, row.actor, row.action, row.target, row.details, prev)
            digest = formula(*fields)
            connection.execute(
                sa.text("UPDATE audit_events SET prev_hash = :p, hash = :h WHERE seq = :s"),
                {"p": prev, "h": digest, "s": row.seq},
            )
            prev = digest
        connection.execute(sa.text("UPDATE audit_head SET hash = :h"), {"h": prev})


def _truncate_and_rewrite_head(store: Store, keep: int) -> None:
    with store.engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM audit_events WHERE seq > :k"), {"k": keep})
        last = connection.execute(
            sa.text("SELECT hash FROM audit_events WHERE seq = :k"), {"k": keep}
        ).scalar_one()
        connection.execute(
            sa.text("UPDATE audit_head SET seq = :k, hash = :h"), {"k": keep, "h": last}
        )


@pytest.fixture
def witnessed(store_url: str, tmp_path: Path) -> Iterator[Store]:
    """A store exporting its audit head to ``tmp_path/witness`` every 2 events."""
    settings = Settings.from_env().model_copy(
        update={"audit_witness_url": str(tmp_path / "witness"), "audit_witness_every": 2}
    )
    with open_store(settings, url=store_url, artifacts_url=str(tmp_path / "a")) as opened:
        yield opened


def test_an_untouched_log_verifies(store: Store) -> None:
    _five_events(store)
    report = store.verify_audit()
    assert (report.ok, report.events, report.witnessed) == (True, 5, 0)
    assert store.check_audit() == 5
    events = store.list_audit()
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert [e.action for e in events] == [
        "project.create", "run.create", "run.finish", "token.create", "job.submit",
    ]  # fmt: skip
    assert all(e.prev_hash == p.hash for p, e in itertools.pairwise(events))
    assert store.list_audit(action="run.finish")[0].seq == 3


def test_an_edited_event_is_named(store: Store) -> None:
    _five_events(store)
    _sql(store, "UPDATE audit_events SET actor = 'mallory' WHERE seq = 3")
    report = store.verify_audit()
    assert (report.ok, report.first_bad_seq) == (False, 3)
    with pytest.raises(AuditTampered, match=r"audit event 3: .*actor='mallory'.* was edited"):
        store.check_audit()


def test_a_deleted_event_is_named(store: Store) -> None:
    _five_events(store)
    _sql(store, "DELETE FROM audit_events WHERE seq = 2")
    with pytest.raises(AuditTampered, match=r"audit event 3: expected event 2 next .*deleted"):
        store.check_audit()


def test_reordered_events_are_named(store: Store) -> None:
    _five_events(store)
    # swap events 2 and 4 by renumbering them
    _sql(store, "UPDATE audit_events SET seq = 100 WHERE seq = 2")
    _sql(store, "UPDATE audit_events SET seq = 2 WHERE seq = 4")
    _sql(store, "UPDATE audit_events SET seq = 4 WHERE seq = 100")
    with pytest.raises(AuditTampered, match=r"audit event 2: .*reordered"):
        store.check_audit()


def test_events_cut_from_the_end_are_noticed(store: Store) -> None:
    _five_events(store)
    _sql(store, "DELETE FROM audit_events WHERE seq >= 4")
    with pytest.raises(AuditTampered, match=r"audit event 4: the log ends at event 3 .*deleted"):
        store.check_audit()


def test_a_chain_recomputed_with_the_old_unkeyed_formula_is_caught(store: Store) -> None:
    _five_events(store)
    _recompute(store, unkeyed_event_hash, edit_seq=3)
    with pytest.raises(AuditTampered, match=r"audit event 1: .*recomputed without the audit key"):
        store.check_audit()


def test_a_chain_recomputed_with_a_wrong_key_is_caught(store: Store) -> None:
    _five_events(store)
    guess = b"0" * 64
    _recompute(store, lambda *fields: event_hash(guess, *fields), edit_seq=3)
    assert store.verify_audit().first_bad_seq == 1


def test_truncation_with_a_rewritten_head_needs_the_witness(witnessed: Store) -> None:
    _five_events(witnessed)  # heads of events 2 and 4 exported
    _truncate_and_rewrite_head(witnessed, keep=3)
    # the database alone is consistent again: this is what the witness is for
    assert witnessed.verify_audit(witness_url="memory://no-witness-here").ok
    with pytest.raises(
        AuditTampered,
        match=r"audit event 4: the log ends at event 3 but the witness recorded event 4: .*cut off",
    ):
        witnessed.check_audit()


def test_a_rewrite_by_someone_holding_the_key_is_caught_by_the_witness(
    witnessed: Store,
) -> None:
    _five_events(witnessed)
    key = load_audit_key(Settings.from_env().home)
    _recompute(witnessed, lambda *fields: event_hash(key, *fields), edit_seq=1)
    assert witnessed.verify_audit(witness_url="memory://no-witness-here").ok
    report = witnessed.verify_audit()
    assert (report.ok, report.first_bad_seq) == (False, 2)
    assert "differs from the one the witness recorded" in (report.reason or "")


def test_the_witness_holds_every_nth_head_and_an_intact_log_matches_it(
    witnessed: Store, tmp_path: Path
) -> None:
    _five_events(witnessed)
    heads = AuditWitness(str(tmp_path / "witness")).heads()
    events = {e.seq: e.hash for e in witnessed.list_audit()}
    assert [(h.seq, h.hash) for h in heads] == [(2, events[2]), (4, events[4])]
    assert witnessed.verify_audit().witnessed == 2
    # an export on demand (e.g. before a backup) covers the newest event too
    url = f"memory://witness-{uuid.uuid4().hex}"
    exported = witnessed.export_audit_head(url)
    assert exported is not None and (exported.seq, exported.hash) == (5, events[5])
    _truncate_and_rewrite_head(witnessed, keep=4)
    assert witnessed.verify_audit().ok  # the local witness last saw event 4
    assert witnessed.verify_audit(url).first_bad_seq == 5


def test_a_store_opened_with_another_key_does_not_verify(
    store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_store(url=store_url, artifacts_url=str(tmp_path / "a")) as first:
        _five_events(first)
    monkeypatch.setenv(AUDIT_KEY_ENV, "k" * 40)
    with open_store(url=store_url, artifacts_url=str(tmp_path / "a")) as second:
        assert second.verify_audit().first_bad_seq == 1


def test_the_key_file_is_created_private_once(clean_environment: Path) -> None:
    first = load_audit_key(clean_environment)
    path = audit_key_path(clean_environment)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) == 64 and load_audit_key(clean_environment) == first
    assert [p.name for p in clean_environment.iterdir()] == ["audit.key"]  # no temporary left


def test_a_key_file_others_may_read_is_refused(clean_environment: Path) -> None:
    load_audit_key(clean_environment)
    path = audit_key_path(clean_environment)
    path.chmod(0o644)
    with pytest.raises(AuditKeyError, match=r"audit.key has mode 644.*chmod 600"):
        load_audit_key(clean_environment)


def test_the_environment_key_wins_and_a_short_one_is_refused(clean_environment: Path) -> None:
    assert load_audit_key(clean_environment, {AUDIT_KEY_ENV: "s" * 32}) == b"s" * 32
    assert not audit_key_path(clean_environment).exists()
    with pytest.raises(AuditKeyError, match=r"KILOWATT_AUDIT_KEY has 6 characters.*at least 32"):
        load_audit_key(clean_environment, {AUDIT_KEY_ENV: "secret"})


def test_actor_override_is_recorded(store: Store) -> None:
    store.as_actor("token:ci").create_run("audit")
    assert {e.actor for e in store.list_audit()} == {"token:ci"}
    assert store.check_audit() == 2


def test_a_home_where_no_key_can_be_made_says_what_to_do(tmp_path: Path) -> None:
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")
    with pytest.raises(
        AuditKeyError, match=r"cannot read or create the audit key file .*KILOWATT_AUDIT_KEY"
    ):
        load_audit_key(blocked / "home")
