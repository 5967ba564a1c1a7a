"""``kilowatt ui`` (the control plane and dashboard) and ``kilowatt token create|list|revoke``."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import typer

from kilowatt.spec import Settings

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765

token_app = typer.Typer(
    name="token", help="Manage API tokens for the control plane.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    app.command(name="ui")(ui)
    app.add_typer(token_app)


def ui(
    host: str = typer.Option(DEFAULT_HOST, help="Address to bind; non-loopback needs a token."),
    port: int = typer.Option(DEFAULT_PORT, min=0, max=65535, help="Port to bind (0: any free)."),
    tls_cert: Path | None = typer.Option(None, help="PEM certificate: serve HTTPS."),
    tls_key: Path | None = typer.Option(None, help="PEM private key of --tls-cert."),
) -> None:
    """Serve the REST API and the web dashboard (Ctrl-C stops it)."""
    from kilowatt.api import check_bind, create_app, run_server
    from kilowatt.store import open_store

    settings = Settings.from_env()
    store = open_store(settings)
    decision = check_bind(host, has_tokens=store.has_active_tokens())
    app = create_app(settings, store, auth_required=decision.auth_required)
    typer.echo(decision.notice)
    run_server(
        app,
        host,
        port,
        tls_cert=tls_cert,
        tls_key=tls_key,
        on_listening=lambda url: typer.echo(f"kilowatt dashboard: {url}/  (API docs at /docs)"),
    )


def _when(epoch_s: float | None) -> str:
    if epoch_s is None:
        return "-"
    return datetime.fromtimestamp(epoch_s, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@token_app.command("create")
def token_create(
    name: str = typer.Argument(..., help="Who or what the token is for (shown in the audit log)."),
    role: str = typer.Option("viewer", help="viewer (read), operator (write) or admin (all)."),
) -> None:
    """Create a token and print its secret once; only its hash is stored."""
    from kilowatt.api import Role
    from kilowatt.store import open_store

    Role.parse(role)
    token_id, secret = open_store(Settings.from_env()).create_token(name, role)
    typer.echo(f"created token {token_id} for {name!r} with role {role}")
    typer.echo("secret (shown only now; send it as 'Authorization: Bearer <secret>'):")
    typer.echo(secret)


@token_app.command("list")
def token_list() -> None:
    """List tokens (never their secrets)."""
    from rich.console import Console
    from rich.table import Table

    from kilowatt.store import open_store

    table = Table("id", "name", "role", "created", "by", "last used", "state")
    for info in open_store(Settings.from_env()).list_tokens():
        state = "active" if info.active else f"revoked {_when(info.revoked_at)}"
        table.add_row(
            info.id, info.name, info.role, _when(info.created_at), info.created_by,
            _when(info.last_used_at), state,
        )  # fmt: skip
    Console().print(table)


@token_app.command("revoke")
def token_revoke(
    token_id: str = typer.Argument(..., help="The id from `kilowatt token list`."),
) -> None:
    """Revoke a token: requests that send it are refused from now on."""
    from kilowatt.store import open_store

    open_store(Settings.from_env()).revoke_token(token_id)
    typer.echo(f"revoked token {token_id}")
