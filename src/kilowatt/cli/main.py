"""The ``kilowatt`` command: one Typer app; each concept registers its own commands.

Command modules import heavy dependencies (torch, SQLAlchemy, uvicorn) inside the
command functions, so ``kilowatt plan`` starts without loading them.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import typer
from rich.console import Console
from rich.markup import escape

from kilowatt.errors import KilowattError

__all__ = ["EXIT_ERROR", "EXIT_USAGE", "app", "main"]

EXIT_ERROR = 1
EXIT_USAGE = 2

app = typer.Typer(
    name="kilowatt",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Plan, train, serve and meter AI workloads in seconds, joules, dollars and grams CO2e."""


def _register_commands() -> None:
    # Each module adds its commands to ``app``; the order is the order of ``--help``.
    from kilowatt.cli import (
        catalog_cmd,
        data_cmd,
        generate_cmd,
        jobs_cmd,
        models_cmd,
        ops_cmd,
        optimize_cmd,
        plan_cmd,
        quickstart_cmd,
        runs_cmd,
        serve_cmd,
        store_cmd,
        train_cmd,
        ui_cmd,
        version_cmd,
    )

    for module in (
        quickstart_cmd,
        plan_cmd,
        catalog_cmd,
        data_cmd,
        train_cmd,
        serve_cmd,
        generate_cmd,
        runs_cmd,
        models_cmd,
        optimize_cmd,
        store_cmd,
        jobs_cmd,
        ops_cmd,
        ui_cmd,
        version_cmd,
    ):
        module.register(app)


_register_commands()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code; a ``KilowattError`` prints without a traceback."""
    try:
        app(args=list(argv) if argv is not None else None, prog_name="kilowatt")
    except SystemExit as exc:  # the normal way out of a standalone Typer app
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_ERROR)
    except KilowattError as exc:
        err = Console(stderr=True)
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return EXIT_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
