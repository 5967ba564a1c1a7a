"""``kilowatt backup``, ``kilowatt restore`` and ``kilowatt export prometheus|grafana``."""

from __future__ import annotations

import typer

from kilowatt.spec import Settings

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    from kilowatt.cli.jobs_cmd import _export_group

    _register_backup(app)
    _register_export(_export_group(app))


def _register_backup(app: typer.Typer) -> None:
    @app.command(no_args_is_help=True)
    def backup(
        url: str = typer.Argument(..., help="any fsspec URL: a folder, s3://bucket/prefix, ..."),
        verify: bool = typer.Option(
            False, "--verify", help="check the newest (or --snapshot) backup without restoring"
        ),
        snapshot: str | None = typer.Option(None, help="with --verify: which snapshot"),
        include_audit_key: bool = typer.Option(
            False,
            "--include-audit-key",
            help="also copy the audit key file; by default it stays out of backups so a "
            "backup cannot be used to forge the chain it verifies",
        ),
    ) -> None:
        """Snapshot the store, artifacts and checkpoints to URL (incremental), or --verify."""
        if verify:
            from kilowatt.ops.restore import verify_backup

            report = verify_backup(url, snapshot=snapshot)
            audit = (
                ""
                if report.audit_events is None
                else f", audit chain of {report.audit_events} events intact"
            )
            typer.echo(
                f"backup {report.manifest.snapshot} at {url} OK: "
                f"{report.objects} objects match their SHA-256{audit}"
            )
            return
        from kilowatt.ops.backup import take_backup

        result = take_backup(Settings.from_env(), url, include_audit_key=include_audit_key)
        typer.echo(
            f"backup {result.manifest.snapshot} written to {url}: "
            f"{len(result.manifest.objects)} objects ({result.copied_objects} copied, "
            f"{result.copied_bytes:,} bytes; {result.reused_objects} already stored)"
        )

    @app.command(no_args_is_help=True)
    def restore(
        url: str = typer.Argument(..., help="the URL a backup was written to"),
        snapshot: str | None = typer.Option(None, help="which snapshot (default: the newest)"),
        force: bool = typer.Option(False, "--force", help="replace a non-empty home/database"),
    ) -> None:
        """Rebuild KILOWATT_HOME (and the store) from a backup, verifying every hash and
        the audit chain before the old home is replaced."""
        from kilowatt.ops.restore import restore_backup

        settings = Settings.from_env()
        report = restore_backup(settings, url, snapshot=snapshot, force=force)
        typer.echo(
            f"restored {report.manifest.snapshot} into {settings.home}: {report.objects} "
            f"objects verified, audit chain of {report.audit_events} events intact"
        )


def _register_export(export: typer.Typer) -> None:
    del export  # filled in by the monitoring exports
