"""``kilowatt catalog list|show NAME``: browse accelerators, instances and regions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer

__all__ = ["register"]

Kind = Literal["accelerators", "instances", "regions"]
_EXTRA = typer.Option("--catalog", help="extra catalog file (repeatable); later files win")


def _load(extra: list[Path] | None):  # type: ignore[no-untyped-def]
    from kilowatt.catalog import load_catalog
    from kilowatt.spec import Settings

    return load_catalog(extra_files=extra or (), user_dir=Settings.from_env().catalog_dir)


def register(app: typer.Typer) -> None:
    catalog_app = typer.Typer(
        no_args_is_help=True, help="Browse the hardware, price and carbon catalog."
    )
    app.add_typer(catalog_app, name="catalog")

    @catalog_app.command("list")
    def list_entries(
        kind: Annotated[Kind | None, typer.Argument(help="only this table")] = None,
        catalog: Annotated[list[Path] | None, _EXTRA] = None,
    ) -> None:
        """List accelerators, instances and regions."""
        from rich.console import Console

        loaded = _load(catalog)
        console = Console()
        for table in _tables(loaded, kind):
            console.print(table)

    @catalog_app.command("show")
    def show(
        name: Annotated[str, typer.Argument(help="accelerator, instance or region name")],
        catalog: Annotated[list[Path] | None, _EXTRA] = None,
    ) -> None:
        """Show every field of one entry (as JSON), with its source and date."""
        from kilowatt.errors import CatalogLookupError

        loaded = _load(catalog)
        for lookup in (loaded.accelerator, loaded.instance, loaded.region):
            try:
                entry = lookup(name)
            except CatalogLookupError:
                continue
            typer.echo(json.dumps(entry.model_dump(mode="json"), indent=2))
            return
        loaded.accelerator(name)  # raises with "did you mean" over accelerators
        raise AssertionError("unreachable")


def _tables(loaded, kind: Kind | None):  # type: ignore[no-untyped-def]
    from rich.table import Table

    if kind in (None, "accelerators"):
        table = Table(title="accelerators (dense peak)")
        for col in ("name", "kind", "memory GiB", "GB/s", "bf16 TFLOP/s", "fp32 TFLOP/s", "TDP W"):
            table.add_column(col)
        for a in loaded.accelerators:
            bf16 = a.peak_tflops.get("bf16") or a.peak_tflops.get("fp16")
            table.add_row(
                a.name,
                a.kind,
                f"{a.memory_gib:g}",
                f"{a.memory_bandwidth_gb_per_s:g}",
                f"{bf16:g}" if bf16 else "-",
                f"{a.peak_tflops['fp32']:g}",
                f"{a.tdp_w:g}",
            )
        yield table
    if kind in (None, "instances"):
        table = Table(title="instances (on-demand price in the first region)")
        for col in ("name", "cloud", "accelerators", "vCPUs", "network Gbps", "$/h", "regions"):
            table.add_column(col)
        for i in loaded.instances:
            table.add_row(
                i.name,
                i.cloud,
                f"{i.accelerator_count} x {i.accelerator}",
                str(i.vcpus),
                f"{i.network_gbps:g}",
                f"{i.price_usd_per_hour:g}",
                ", ".join(i.regions),
            )
        yield table
    if kind in (None, "regions"):
        table = Table(title=f"regions (default PUE {loaded.default_pue:g})")
        for col in ("name", "cloud", "location", "gCO2e/kWh", "PUE"):
            table.add_column(col)
        for r in loaded.regions:
            table.add_row(
                r.name, r.cloud, r.location, f"{r.grid_intensity_gco2e_per_kwh:g}", f"{r.pue:g}"
            )
        yield table
