"""The append-only audit log: every mutating operation appends an event to a SHA-256 chain.

Each event's hash covers its sequence number, time, actor, action, target, details and the
previous event's hash, so editing, deleting or reordering rows in SQL breaks the chain at
the first touched event. ``audit_head`` keeps the newest sequence number and hash, so cutting
events off the end is caught too. Appends happen inside the caller's transaction, so an
operation and its audit event commit together or not at all.
"""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import closing
from typing import Any

import sqlalchemy as sa

from kilowatt.errors import AuditTampered
from kilowatt.store import schema as t
from kilowatt.store.records import AuditEvent, VerifyReport

__all__ = ["GENESIS_HASH", "AuditMixin", "append_event", "event_hash"]

GENESIS_HASH = "0" * 64
_HEAD_ID = 1


def event_hash(
    seq: int, time_s: float, actor: str, action: str, target: str, details: str, prev_hash: str
) -> str:
    """The SHA-256 (hex) of an event's canonical JSON form."""
    payload = json.dumps(
        [seq, repr(float(time_s)), actor, action, target, details, prev_hash],
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def append_event(
    connection: sa.Connection, actor: str, action: str, target: str, details: dict[str, Any]
) -> int:
    """Append one event inside the open transaction of ``connection``; return its seq."""
    head = connection.execute(
        sa.select(t.audit_head.c.seq, t.audit_head.c.hash)
        .where(t.audit_head.c.id == _HEAD_ID)
        .with_for_update()  # serialises appends on PostgreSQL; SQLite holds the write lock
    ).first()
    prev_seq, prev_hash = (head.seq, head.hash) if head else (0, GENESIS_HASH)
    seq, now = prev_seq + 1, time.time()
    details_text = json.dumps(details, sort_keys=True, separators=(",", ":"), default=str)
    digest = event_hash(seq, now, actor, action, target, details_text, prev_hash)
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

    def verify_audit(self) -> VerifyReport:
        """Walk the whole chain; report the first event that was edited, deleted or moved."""
        count, expected_seq, prev_hash = 0, 1, GENESIS_HASH
        with self._engine.connect() as connection:
            query = sa.select(t.audit_events).order_by(t.audit_events.c.seq)
            # stream the log (it only grows); closing ends the server-side cursor early
            result = connection.execution_options(yield_per=2000).execute(query)
            with closing(result):
                for row in result:
                    problem = _check(row, expected_seq, prev_hash)
                    if problem is not None:
                        return VerifyReport(False, count, first_bad_seq=row.seq, reason=problem)
                    count, expected_seq, prev_hash = count + 1, row.seq + 1, row.hash
            head = connection.execute(sa.select(t.audit_head)).first()
        head_seq, head_hash = (head.seq, head.hash) if head else (0, GENESIS_HASH)
        if (head_seq, head_hash) != (expected_seq - 1, prev_hash):
            return VerifyReport(
                False,
                count,
                first_bad_seq=expected_seq,
                reason=f"the log ends at event {expected_seq - 1} but its head records event "
                f"{head_seq}: events from {expected_seq} on were deleted",
            )
        return VerifyReport(True, count)

    def check_audit(self) -> int:
        """Like ``verify_audit`` but raise; return the number of events verified.

        Raises:
            AuditTampered: naming the first bad event and what is wrong with it.
        """
        report = self.verify_audit()
        if not report.ok:
            raise AuditTampered(f"audit event {report.first_bad_seq}: {report.reason}")
        return report.events


def _check(row: Any, expected_seq: int, prev_hash: str) -> str | None:
    if row.seq != expected_seq:
        return (
            f"expected event {expected_seq} next but found {row.seq}: "
            f"event(s) {expected_seq}..{row.seq - 1} were deleted or renumbered"
        )
    if row.prev_hash != prev_hash:
        return "its previous-hash does not match the event before it: events were reordered"
    recomputed = event_hash(
        row.seq, row.time, row.actor, row.action, row.target, row.details, row.prev_hash
    )
    if recomputed != row.hash:
        return (
            f"its contents do not match its hash (action={row.action!r}, target={row.target!r},"
            f" actor={row.actor!r}): the event was edited"
        )
    return None
