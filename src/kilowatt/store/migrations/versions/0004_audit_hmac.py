"""Key the audit chain: every event's SHA-256 becomes an HMAC-SHA256 under the audit key.

The existing chain is first verified under the old, unkeyed formula; only an intact chain
is re-keyed (event by event, so each ``prev_hash`` follows), because keying a chain that
was already tampered with would vouch for the tampering. A broken chain stops the upgrade
with the first bad event named; the store stays at the previous revision. A downgrade
does the reverse: it verifies the keyed chain, then writes the unkeyed hashes back.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from alembic import context, op

from kilowatt.errors import AuditTampered
from kilowatt.spec import Settings
from kilowatt.store.audit import GENESIS_HASH, event_hash, unkeyed_event_hash
from kilowatt.store.audit_key import load_audit_key

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_events = sa.table(
    "audit_events",
    sa.column("seq", sa.Integer),
    sa.column("time", sa.Float),
    sa.column("actor", sa.String),
    sa.column("action", sa.String),
    sa.column("target", sa.String),
    sa.column("details", sa.Text),
    sa.column("prev_hash", sa.String),
    sa.column("hash", sa.String),
)
_head = sa.table("audit_head", sa.column("id", sa.Integer), sa.column("seq", sa.Integer),
                 sa.column("hash", sa.String))  # fmt: skip


def upgrade() -> None:
    key = _audit_key()
    _rehash(
        lambda prev, fields: unkeyed_event_hash(*fields, prev),
        lambda prev, fields: event_hash(key, *fields, prev),
        what="unkeyed",
    )


def downgrade() -> None:
    """Back to the unkeyed formula (after verifying the keyed chain under the key)."""
    key = _audit_key()
    _rehash(
        lambda prev, fields: event_hash(key, *fields, prev),
        lambda prev, fields: unkeyed_event_hash(*fields, prev),
        what="keyed",
    )


_Formula = Callable[[str, tuple[Any, ...]], str]


def _audit_key() -> bytes:
    key = context.config.attributes.get("audit_key")
    return key if key is not None else load_audit_key(Settings.from_env().home)


def _rehash(old: _Formula, new: _Formula, *, what: str) -> None:
    """Verify the chain under ``old``, then rewrite every hash (and the head) under ``new``."""
    connection = op.get_bind()
    rows = connection.execute(sa.select(_events).order_by(_events.c.seq)).all()
    old_prev, new_prev = GENESIS_HASH, GENESIS_HASH
    for expected_seq, row in enumerate(rows, start=1):
        fields = (row.seq, row.time, row.actor, row.action, row.target, row.details)
        intact = (row.seq, row.prev_hash) == (expected_seq, old_prev)
        if not intact or old(row.prev_hash, fields) != row.hash:
            raise AuditTampered(
                f"audit event {row.seq}: the {what} chain does not verify from here, so it is "
                "not re-hashed (that would vouch for the tampering); restore the database "
                "from a backup, or open it with the kilowatt that wrote it to inspect it"
            )
        new_hash = new(new_prev, fields)
        connection.execute(
            sa.update(_events)
            .where(_events.c.seq == row.seq)
            .values(prev_hash=new_prev, hash=new_hash)
        )
        old_prev, new_prev = row.hash, new_hash
    head = connection.execute(sa.select(_head)).first()
    if head is None:
        return
    if (head.seq, head.hash) != (len(rows), old_prev):
        raise AuditTampered(
            f"audit event {len(rows) + 1}: the log ends at event {len(rows)} but its head "
            f"records event {head.seq}; restore the database from a backup"
        )
    connection.execute(sa.update(_head).values(hash=new_prev))
