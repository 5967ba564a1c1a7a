"""The audit hash chain: tampering by SQL is detected and the first bad event named."""

from __future__ import annotations

import itertools

import pytest
import sqlalchemy as sa

from kilowatt.errors import AuditTampered
from kilowatt.store import Store


def _five_events(store: Store) -> None:
    run = store.create_run("audit")  # project.create (1), run.create (2)
    store.finish_run(run.id)  # run.finish (3)
    store.create_token("ci", "viewer")  # token.create (4)
    store.submit_job({"cmd": "train"}, name="nightly")  # job.submit (5)


def _sql(store: Store, statement: str) -> None:
    with store.engine.begin() as connection:
        connection.execute(sa.text(statement))


def test_an_untouched_log_verifies(store: Store) -> None:
    _five_events(store)
    report = store.verify_audit()
    assert (report.ok, report.events) == (True, 5)
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


def test_actor_override_is_recorded(store: Store) -> None:
    store.as_actor("token:ci").create_run("audit")
    assert {e.actor for e in store.list_audit()} == {"token:ci"}
    assert store.check_audit() == 2
