"""``kilowatt version``."""

from __future__ import annotations

import typer

import kilowatt


def register(app: typer.Typer) -> None:
    @app.command()
    def version() -> None:
        """Print the installed kilowatt version."""
        typer.echo(kilowatt.__version__)
