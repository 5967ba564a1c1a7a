"""``kilowatt store migrate`` and ``kilowatt audit list|verify``, plus helpers the
other store commands (runs, models, lineage) share."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from kilowatt.spec import Settings

if TYPE_CHECKING:
    from kilowatt.store import Store

store_app = typer.Typer(name="store", help="Manage the tracking store.", no_args_is_help=True)
audit_app = typer.Typer(
    name="audit", help="Read and verify the tamper-evident audit log.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    app.add_typer(store_app)
    app.add_typer(audit_app)


def open_cli_store() -> Store:
    """The store named by the environment (KILOWATT_HOME, KILOWATT_STORE_URL, ...)."""
    from kilowatt.store import open_store

    return open_store(Settings.from_env())


def when(epoch_s: float | None) -> str:
    """A UTC timestamp for tables, or '-'."""
    if epoch_s is None:
        return "-"
    return datetime.fromtimestamp(epoch_s, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def console() -> Console:
    """Output for tables; wide enough that ids are not cut when piped."""
    return Console(width=200, highlight=False, soft_wrap=True)


@store_app.command("migrate")
def migrate() -> None:
    """Create or upgrade the store's schema (opening any store does this too)."""
    from kilowatt.store._engine import schema_revision

    with open_cli_store() as store:
        typer.echo(f"store {store.url} is at schema revision {schema_revision(store.engine)}")


@audit_app.command("list")
def audit_list(
    limit: int = typer.Option(50, min=1, help="Show at most this many events."),
    action: str | None = typer.Option(None, help="Only this action, e.g. model.alias."),
    actor: str | None = typer.Option(None, help="Only events by this actor."),
    target: str | None = typer.Option(None, help="Only targets starting with this, e.g. model:clf"),
    after: int = typer.Option(0, min=0, help="Only events after this sequence number."),
) -> None:
    """List audit events in order: who did what to which target, and when."""
    with open_cli_store() as store:
        events = store.list_audit(
            limit=limit, action=action, actor=actor, target=target, after_seq=after
        )
    table = Table("seq", "time (UTC)", "actor", "action", "target", "details", "hash")
    for event in events:
        details = ", ".join(f"{k}={v}" for k, v in sorted(event.details.items()))
        table.add_row(
            str(event.seq),
            when(event.time),
            event.actor,
            event.action,
            event.target,
            details,
            event.hash[:12],
        )
    console().print(table)


@audit_app.command("verify")
def audit_verify(
    witness: str | None = typer.Option(
        None,
        help="Check against the heads exported to this folder or fsspec URL too "
        "(default: KILOWATT_AUDIT_WITNESS_URL, if set).",
    ),
) -> None:
    """Recompute the HMAC chain; exit 1 naming the first edited, deleted or moved event."""
    from kilowatt.errors import AuditTampered

    with open_cli_store() as store:
        report = store.verify_audit(witness)
    if not report.ok:
        raise AuditTampered(f"audit event {report.first_bad_seq}: {report.reason}")
    checked = f", {report.witnessed} witnessed heads match" if report.witnessed else ""
    typer.echo(f"audit log OK: {report.events} events, HMAC chain intact{checked}")


@audit_app.command("export-head")
def audit_export_head(
    witness: str | None = typer.Option(
        None, help="Folder or fsspec URL (default: KILOWATT_AUDIT_WITNESS_URL)."
    ),
) -> None:
    """Export the audit chain's current head to the witness now (e.g. before a backup)."""
    with open_cli_store() as store:
        head = store.export_audit_head(witness)
    if head is None:
        typer.echo("the audit log is empty; nothing to export")
    else:
        typer.echo(f"exported audit head: event {head.seq} {head.hash}")
