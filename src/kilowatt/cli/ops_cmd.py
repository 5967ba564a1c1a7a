"""``kilowatt backup``, ``kilowatt restore`` and ``kilowatt export prometheus|grafana``."""

from __future__ import annotations

from pathlib import Path

import typer

from kilowatt.spec import Settings

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    from kilowatt.cli.jobs_cmd import _export_group

    _register_backup(app)
    export = _export_group(app)
    _register_export(export)
    _register_grafana(export)


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
        if snapshot is not None and not verify:
            from kilowatt.errors import SpecError

            raise SpecError(f"--snapshot {snapshot} names a snapshot to check: add --verify")
        if verify:
            from kilowatt.ops.restore import verify_backup

            report = verify_backup(Settings.from_env(), url, snapshot=snapshot)
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
    @export.command("prometheus")
    def prometheus(
        out: Path = typer.Option(Path("prometheus"), help="folder for prometheus.yml + rules"),
        api_url: str | None = typer.Option(
            "http://127.0.0.1:8765", help="the `kilowatt ui` server to scrape ('' to skip)"
        ),
        api_token_file: str | None = typer.Option(None, help="file holding an API token"),
        serve_url: list[str] = typer.Option(
            [], help="more `kilowatt serve` base URLs (servers of files are not recorded)"
        ),
        scrape_interval_s: float = typer.Option(15.0, help="scrape interval"),
        evaluation_interval_s: float = typer.Option(15.0, help="rule evaluation interval"),
        latency_slo_ms: float = typer.Option(500.0, help="serving latency objective"),
        slo_target: float = typer.Option(0.99, help="share of requests under the objective"),
        burn_long_s: float = typer.Option(3600.0, help="long window of the fast burn alert"),
        burn_short_s: float = typer.Option(300.0, help="short window of the fast burn alert"),
        energy_budget_j: float = typer.Option(1.0, help="energy budget per request (J)"),
        error_ratio: float = typer.Option(0.01, help="5xx share that alerts"),
        shed_ratio: float = typer.Option(0.05, help="429 share that alerts"),
        queue_fraction: float = typer.Option(0.8, help="queue depth / capacity that alerts"),
        train_stall_s: float = typer.Option(600.0, help="no training step for this long alerts"),
        for_s: float = typer.Option(120.0, help="how long a condition holds before it fires"),
    ) -> None:
        """Write a Prometheus scrape configuration for the API server, every running
        deployment and training job in the store, and alert rules for them."""
        from kilowatt.ops.prometheus import AlertOptions, write_prometheus
        from kilowatt.store import open_store

        options = AlertOptions(
            latency_slo_s=latency_slo_ms / 1e3, slo_target=slo_target,
            burn_long_s=burn_long_s, burn_short_s=burn_short_s,
            energy_per_request_j=energy_budget_j, error_ratio=error_ratio,
            shed_ratio=shed_ratio, queue_fraction=queue_fraction,
            train_stall_s=train_stall_s, for_s=for_s,
        )  # fmt: skip
        with open_store(Settings.from_env()) as store:
            written = write_prometheus(
                out, store, options,
                api_url=api_url or None, api_token_file=api_token_file, serve_urls=serve_url,
                scrape_interval_s=scrape_interval_s, evaluation_interval_s=evaluation_interval_s,
            )  # fmt: skip
        for path, summary in written:
            typer.echo(f"wrote {path} ({summary})")


def _register_grafana(export: typer.Typer) -> None:
    @export.command("grafana")
    def grafana(
        out: Path = typer.Option(Path("kilowatt-dashboard.json"), help="dashboard JSON file"),
        region: str = typer.Option(
            "local", help="catalog region whose grid intensity the carbon panels use"
        ),
    ) -> None:
        """Write a Grafana dashboard (serving, training, energy and carbon) for provisioning."""
        import json

        from kilowatt.catalog import load_catalog
        from kilowatt.ops.grafana import dashboard

        settings = Settings.from_env()
        grid = load_catalog(user_dir=settings.catalog_dir).region(region)
        board = dashboard(grid_gco2e_per_kwh=grid.grid_intensity_gco2e_per_kwh, region=region)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(board, indent=2) + "\n")
        panels = sum(1 for panel in board["panels"] if panel["type"] != "row")
        typer.echo(f"wrote {out} ({panels} panels, uid {board['uid']})")
