"""``kilowatt data create|list|show|verify|delete|diff``: versioned data sets.

Data sets live under ``KILOWATT_DATA_URL`` (default ``KILOWATT_HOME/data``; any fsspec URL,
``s3://`` with ``KILOWATT_S3_ENDPOINT_URL`` for S3-compatible servers). Every created
version is recorded in the tracking store with its URL, rows, bytes, schema and fingerprint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from kilowatt.cli.store_cmd import console, open_cli_store, when
from kilowatt.errors import DataError
from kilowatt.spec import Settings

__all__ = ["record_input", "register"]

data_app = typer.Typer(
    name="data", help="Versioned data sets: create, verify, inspect, compare.", no_args_is_help=True
)
MIB = 1024 * 1024


def register(app: typer.Typer) -> None:
    app.add_typer(data_app)


def _storage(endpoint_url: str | None = None) -> Any:
    from kilowatt.data import Storage, storage_from_settings

    storage = storage_from_settings(Settings.from_env())
    if endpoint_url:
        return Storage(storage.root, endpoint_url=endpoint_url)
    return storage


def _record(store_or_run: Any, version: Any, **link: Any) -> None:
    m = version.manifest
    store_or_run.log_dataset(
        m.name,
        version=m.version,
        fingerprint=m.fingerprint,
        source_url=version.url,
        size_bytes=m.bytes,
        num_rows=m.rows,
        schema=m.schema,
        **link,
    )


def record_input(run: Any, ref: str, settings: Settings) -> None:
    """Record data set ``ref`` in the store and the lineage edge data set -> ``run``."""
    from kilowatt.data import open_dataset, storage_from_settings

    _record(run, open_dataset(ref, storage_from_settings(settings)))


@data_app.command("create")
def data_create(
    source: Path = typer.Argument(
        ..., help="A folder of files, or a .parquet, .csv, .arrow or .npz file."
    ),
    name: str = typer.Option(..., "--name", help="Data set name."),
    version: str = typer.Option(..., "--version", help="Version label, e.g. v1 or 2026-11-30."),
    to: str | None = typer.Option(None, "--to", help="Version URL (default: under the root)."),
    shard_mb: float = typer.Option(64.0, "--shard-mb", min=0.001, help="Shard size in MiB."),
    allow_schema_change: bool = typer.Option(
        False, help="Allow a schema unlike the newest version's."
    ),
    endpoint_url: str | None = typer.Option(None, help="S3-compatible endpoint for s3:// URLs."),
) -> None:
    """Write SOURCE as an immutable version (shards + manifest) and record it in the store."""
    from kilowatt.data import create_dataset

    created = create_dataset(
        source,
        name,
        version,
        _storage(endpoint_url),
        url=to,
        shard_bytes=int(shard_mb * MIB),
        allow_schema_change=allow_schema_change,
    )
    with open_cli_store() as store:
        _record(store, created)
    m = created.manifest
    typer.echo(
        f"data set {m.name}:{m.version}: {m.rows} rows, {len(m.shards)} shards, "
        f"{m.bytes / MIB:.1f} MiB at {created.url}; fingerprint {m.fingerprint[:16]}"
    )


@data_app.command("list")
def data_list(
    name: str | None = typer.Argument(None, help="Only this data set's versions."),
) -> None:
    """List the versions under the data root."""
    from kilowatt.data import list_versions

    table = Table("data set", "version", "rows", "shards", "MiB", "fingerprint", "created (UTC)")
    for v in list_versions(_storage(), name):
        m = v.manifest
        table.add_row(
            m.name,
            m.version,
            str(m.rows),
            str(len(m.shards)),
            f"{m.bytes / MIB:.1f}",
            m.fingerprint[:16],
            when(m.created_at),
        )
    console().print(table)


@data_app.command("show")
def data_show(
    ref: str = typer.Argument(..., help="NAME:VERSION or a version URL."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole manifest as JSON."),
) -> None:
    """Show a version: location, schema, shards and per-column statistics."""
    from kilowatt.data import open_dataset

    version = open_dataset(ref, _storage())
    m = version.manifest
    if as_json:
        typer.echo(m.to_json().decode())
        return
    out = console()
    out.print(f"[bold]data set {m.name}:{m.version}[/]  {version.url}")
    out.print(f"fingerprint {m.fingerprint}")
    out.print(f"{m.rows} rows in {len(m.shards)} shards, {m.bytes} bytes; from {m.source}")
    out.print(f"created {when(m.created_at)} UTC by {m.created_by}")
    table = Table("column", "type", "nulls", "min", "max", "mean")
    for column, stats in m.stats.get("columns", {}).items():
        table.add_row(
            column,
            stats["type"],
            str(stats["nulls"]),
            *(f"{stats[k]:.4g}" if k in stats else "-" for k in ("min", "max", "mean")),
        )
    out.print(table)


@data_app.command("verify")
def data_verify(ref: str = typer.Argument(..., help="NAME:VERSION or a version URL.")) -> None:
    """Re-read and re-hash every shard; exit 1 naming each missing, truncated or changed one."""
    from kilowatt.data import verify_dataset

    report = verify_dataset(ref, _storage())
    if report.bad:
        bad = "; ".join(f"{name}: {why}" for name, why in report.bad.items())
        raise DataError(
            f"{report.url}: {len(report.bad)} of {len(report.results)} shards are bad ({bad}); "
            "restore them or recreate the version"
        )
    typer.echo(f"{report.url}: all {len(report.results)} shards match the manifest")


@data_app.command("delete")
def data_delete(ref: str = typer.Argument(..., help="NAME:VERSION or a version URL.")) -> None:
    """Delete a version's files (the store keeps its record, so lineage stays readable)."""
    from kilowatt.data import delete_dataset

    version = delete_dataset(ref, _storage())
    typer.echo(f"deleted {version.manifest.name}:{version.manifest.version} at {version.url}")


@data_app.command("diff")
def data_diff(
    a: str = typer.Argument(..., help="NAME:VERSION (or URL) of the old version."),
    b: str = typer.Argument(..., help="NAME:VERSION (or URL) of the new version."),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
) -> None:
    """Schema changes and distribution shift (population stability index) from A to B."""
    from kilowatt.data import diff_stats, open_dataset

    storage = _storage()
    old, new = open_dataset(a, storage), open_dataset(b, storage)
    diff = diff_stats(old.manifest.stats, new.manifest.stats)
    if as_json:
        typer.echo(json.dumps(diff.__dict__ | {"shifted": diff.shifted}, indent=1, default=list))
        return
    out = console()
    out.print(f"rows: {diff.rows[0]} -> {diff.rows[1]}")
    for column, kind in diff.added.items():
        out.print(f"+ column {column} ({kind})")
    for column, kind in diff.removed.items():
        out.print(f"- column {column} ({kind})")
    for column, (before, after) in diff.retyped.items():
        out.print(f"~ column {column}: {before} -> {after}")
    table = Table("column", "nulls", "mean", "PSI", "shift")
    for column, entry in diff.columns.items():
        mean = entry.get("mean")
        psi = entry.get("psi")
        table.add_row(
            column,
            f"{entry['nulls'][0]} -> {entry['nulls'][1]}",
            "-" if mean is None else f"{mean[0]:.4g} -> {mean[1]:.4g}",
            "-" if psi is None else f"{psi:.3f}",
            "shifted" if column in diff.shifted else "",
        )
    out.print(table)
