"""The append-only audit log: every mutating operation appends an event to an HMAC chain.

Each event's hash is an HMAC-SHA256, under a key kept outside the database
(``kilowatt.store.audit_key``), of its sequence number, time, actor, action, target,
details and the previous event's hash. Editing, deleting or reordering rows in SQL breaks
the chain at the first touched event, and without the key nobody can recompute a chain
that verifies. ``audit_head`` keeps the newest sequence number and hash, so cutting events
off the end is caught too, unless the head row is rewritten with them: that, and a
rewrite by someone holding the key, only an external witness catches
(``kilowatt.store.audit_witness``). Appends happen inside the caller's transaction, so an
operation and its audit event commit together or not at all.

What is not caught: someone holding both the key and write access to the witness; events
after the newest exported head cut off together with a rewritten head row; and, with no
witness configured, any truncation whose head row is rewritten to match.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from contextlib import closing
from typing import Any

import sqlalchemy as sa

from kilowatt.errors import AuditTampered, StoreError
from kilowatt.store import schema as t
from kilowatt.store.audit_witness import AuditWitness, WitnessedHead
from kilowatt.store.records import AuditEvent, VerifyReport

__all__ = [
    "APPENDED_KEY",
    "GENESIS_HASH",
    "AuditMixin",
    "append_event",
    "event_hash",
    "unkeyed_event_hash",
]

GENESIS_HASH = "0" * 64
#: ``connection.info`` key under which each append leaves its ``WitnessedHead``.
APPENDED_KEY = "kilowatt.audit_appended"
_HEAD_ID = 1


def _payload(
    seq: int, time_s: float, actor: str, action: str, target: str, details: str, prev_hash: str
) -> bytes:
    """An event's canonical JSON form, the bytes its hash covers."""
    return json.dumps(
        [seq, repr(float(time_s)), actor, action, target, details, prev_hash],
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()


def event_hash(
    key: bytes,
    seq: int,
    time_s: float,
    actor: str,
    action: str,
    target: str,
    details: str,
    prev_hash: str,
) -> str:
    """The HMAC-SHA256 (hex) under ``key`` of an event's canonical JSON form."""
    payload = _payload(seq, time_s, actor, action, target, details, prev_hash)
    return hmac.new(key, payload, hashlib.sha256).hexdigest()


def unkeyed_event_hash(
    seq: int, time_s: float, actor: str, action: str, target: str, details: str, prev_hash: str
) -> str:
    """The plain SHA-256 chains had before they were keyed (read only by the migration)."""
    return hashlib.sha256(
        _payload(seq, time_s, actor, action, target, details, prev_hash)
    ).hexdigest()


def append_event(
    connection: sa.Connection,
    key: bytes,
    actor: str,
    action: str,
    target: str,
    details: dict[str, Any],
) -> int:
    """Append one event inside the open transaction of ``connection``; return its seq.

    The new head is also left in ``connection.info[APPENDED_KEY]`` (when the caller put a
    list there), for the caller to hand to a witness once the transaction commits.
    """
    head = connection.execute(
        sa.select(t.audit_head.c.seq, t.audit_head.c.hash)
        .where(t.audit_head.c.id == _HEAD_ID)
        .with_for_update()  # serialises appends on PostgreSQL; SQLite holds the write lock
    ).first()
    prev_seq, prev_hash = (head.seq, head.hash) if head else (0, GENESIS_HASH)
    seq, now = prev_seq + 1, time.time()
    details_text = json.dumps(details, sort_keys=True, separators=(",", ":"), default=str)
    digest = event_hash(key, seq, now, actor, action, target, details_text, prev_hash)
    connection.execute(
        sa.insert(t.audit_events).values(
            seq=seq,
            time=now,
            actor=actor,
            action=action,
            target=target,
            details=details_text,
            prev_hash=prev_hash,
            hash=digest,
        )
    )
    if head is None:
        connection.execute(sa.insert(t.audit_head).values(id=_HEAD_ID, seq=seq, hash=digest))
    else:
        connection.execute(
            sa.update(t.audit_head)
            .where(t.audit_head.c.id == _HEAD_ID)
            .values(seq=seq, hash=digest)
        )
    if APPENDED_KEY in connection.info:
        connection.info[APPENDED_KEY].append(WitnessedHead(seq, digest))
    return seq


def _to_event(row: Any) -> AuditEvent:
    return AuditEvent(
        seq=row.seq,
        time=row.time,
        actor=row.actor,
        action=row.action,
        target=row.target,
        details=json.loads(row.details),
        prev_hash=row.prev_hash,
        hash=row.hash,
    )


class AuditMixin:
    """Reading and verifying the audit log."""

    _engine: sa.Engine
    _audit_key: bytes
    _witness: AuditWitness | None

    def list_audit(
        self,
        *,
        limit: int = 100,
        actor: str | None = None,
        action: str | None = None,
        target: str | None = None,
        after_seq: int = 0,
    ) -> list[AuditEvent]:
        """Events in order, optionally filtered by actor, action or target prefix."""
        query = sa.select(t.audit_events).where(t.audit_events.c.seq > after_seq)
        if actor is not None:
            query = query.where(t.audit_events.c.actor == actor)
        if action is not None:
            query = query.where(t.audit_events.c.action == action)
        if target is not None:
            query = query.where(t.audit_events.c.target.startswith(target, autoescape=True))
        query = query.order_by(t.audit_events.c.seq).limit(limit)
        with self._engine.connect() as connection:
            return [_to_event(row) for row in connection.execute(query)]

    def verify_audit(self, witness_url: str | None = None) -> VerifyReport:
        """Walk the whole chain; report the first event that was edited, deleted or moved.

        Args:
            witness_url: check the chain against the heads exported there too; default
                the store's configured witness (``KILOWATT_AUDIT_WITNESS_URL``), if any.
        """
        witness = AuditWitness(witness_url) if witness_url else self._witness
        witnessed = {head.seq: head.hash for head in witness.heads()} if witness else {}
        count, expected_seq, prev_hash = 0, 1, GENESIS_HASH
        with self._engine.connect() as connection:
            query = sa.select(t.audit_events).order_by(t.audit_events.c.seq)
            # stream the log (it only grows); closing ends the server-side cursor early
            result = connection.execution_options(yield_per=2000).execute(query)
            with closing(result):
                for row in result:
                    problem = _check(self._audit_key, row, expected_seq, prev_hash)
                    if problem is None and witnessed.get(row.seq, row.hash) != row.hash:
                        problem = (
                            "its hash differs from the one the witness recorded: the log was "
                            "rewritten (by someone holding the key) up to here"
                        )
                    if problem is not None:
                        return VerifyReport(False, count, first_bad_seq=row.seq, reason=problem)
                    count, expected_seq, prev_hash = count + 1, row.seq + 1, row.hash
            head = connection.execute(sa.select(t.audit_head)).first()
        return _check_end(count, (head.seq, head.hash) if head else (0, GENESIS_HASH),
                          prev_hash, witnessed)  # fmt: skip

    def check_audit(self, witness_url: str | None = None) -> int:
        """Like ``verify_audit`` but raise; return the number of events verified.

        Raises:
            AuditTampered: naming the first bad event and what is wrong with it.
        """
        report = self.verify_audit(witness_url)
        if not report.ok:
            raise AuditTampered(f"audit event {report.first_bad_seq}: {report.reason}")
        return report.events

    def export_audit_head(self, witness_url: str | None = None) -> WitnessedHead | None:
        """Export the chain's current head to the witness now (e.g. before a backup);
        None when the log is empty.

        Raises:
            StoreError: no witness URL given and none configured.
        """
        witness = AuditWitness(witness_url) if witness_url else self._witness
        if witness is None:
            raise StoreError(
                "no audit witness to export to: pass a URL or set KILOWATT_AUDIT_WITNESS_URL"
            )
        with self._engine.connect() as connection:
            head = connection.execute(sa.select(t.audit_head)).first()
        if head is None:
            return None
        exported = WitnessedHead(head.seq, head.hash)
        witness.export(exported)
        return exported


def _check_end(
    count: int, head: tuple[int, str], last_hash: str, witnessed: dict[int, str]
) -> VerifyReport:
    """The chain ended after ``count`` events: the head row and the witness must agree."""
    last_seq = count
    if head != (last_seq, last_hash):
        return VerifyReport(
            False,
            count,
            first_bad_seq=last_seq + 1,
            reason=f"the log ends at event {last_seq} but its head records event "
            f"{head[0]}: events from {last_seq + 1} on were deleted",
        )
    beyond = [seq for seq in witnessed if seq > last_seq]
    if beyond:
        return VerifyReport(
            False,
            count,
            first_bad_seq=last_seq + 1,
            reason=f"the log ends at event {last_seq} but the witness recorded event "
            f"{max(beyond)}: events from {last_seq + 1} on were cut off and the head rewritten",
        )
    return VerifyReport(True, count, witnessed=len(witnessed))


def _check(key: bytes, row: Any, expected_seq: int, prev_hash: str) -> str | None:
    if row.seq != expected_seq:
        return (
            f"expected event {expected_seq} next but found {row.seq}: "
            f"event(s) {expected_seq}..{row.seq - 1} were deleted or renumbered"
        )
    if row.prev_hash != prev_hash:
        return "its previous-hash does not match the event before it: events were reordered"
    recomputed = event_hash(
        key, row.seq, row.time, row.actor, row.action, row.target, row.details, row.prev_hash
    )
    if not hmac.compare_digest(recomputed, row.hash):
        return (
            f"its contents do not match its HMAC (action={row.action!r}, target={row.target!r},"
            f" actor={row.actor!r}): the event was edited, or the chain recomputed without the "
            "audit key (or this store is opened with a different key)"
        )
    return None
