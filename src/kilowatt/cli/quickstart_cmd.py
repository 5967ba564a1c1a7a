"""``kilowatt quickstart``: plan, train, register, serve, load-test and report, end to end.

What ``make run`` runs. Exit codes: 0 done, 1 error, 130 interrupted (Ctrl-C), after every
process the command started has been stopped.
"""

from __future__ import annotations

from pathlib import Path

import typer

__all__ = ["EXIT_INTERRUPTED", "register"]

#: The shell's code for a command stopped by Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130
_PIPED_WIDTH = 120


def register(app: typer.Typer) -> None:
    @app.command()
    def quickstart(
        fast: bool = typer.Option(
            False, "--fast", help="A short run: 150 training steps, a 1 s load test per level."
        ),
        example: Path = typer.Option(
            Path("examples/quickstart"), help="The example folder (digits.yaml, plan.yaml)."
        ),
        steps: int | None = typer.Option(None, min=1, help="Training steps (overrides --fast)."),
        load_seconds: float | None = typer.Option(
            None, min=0.1, help="Seconds per load-test level (overrides --fast)."
        ),
    ) -> None:
        """Plan, train, register, serve and load-test a small real model, then report.

        Also writes the report as an HTML page in KILOWATT_HOME; `kilowatt ui` shows it all.
        """
        from rich.console import Console

        from kilowatt.cli.quickstart import QuickstartOptions, run_quickstart

        console = Console()
        if not console.is_terminal:  # logs and pipes: do not squeeze tables into 80 columns
            console = Console(width=_PIPED_WIDTH)
        options = QuickstartOptions(
            example=example, fast=fast, steps=steps, load_duration_s=load_seconds
        )
        try:
            run_quickstart(options, console)
        except KeyboardInterrupt as exc:
            detail = getattr(exc, "detail", "")
            console.print(
                f"interrupted{': ' + detail if detail else ''}; every process the quickstart "
                "started is stopped",
                highlight=False,
            )
            raise typer.Exit(EXIT_INTERRUPTED) from None
