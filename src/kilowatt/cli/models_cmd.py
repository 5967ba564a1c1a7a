"""``kilowatt models list|show|alias|delete`` and ``kilowatt lineage MODEL[:VERSION]``."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table
from rich.tree import Tree

from kilowatt.cli.store_cmd import console, open_cli_store, when

models_app = typer.Typer(name="models", help="The model registry: versions and aliases.")
models_app.no_args_is_help = True
_KIND_NAMES = {
    "dataset": "dataset",
    "run": "run",
    "model_version": "model",
    "deployment": "deployment",
}


def register(app: typer.Typer) -> None:
    app.add_typer(models_app)
    app.command(name="lineage")(lineage)


@models_app.command("list")
def models_list(
    name: str | None = typer.Argument(None, help="Only versions of this model."),
) -> None:
    """List model versions with their aliases and source runs."""
    with open_cli_store() as store:
        versions = store.list_model_versions(name)
    table = Table("model", "version", "aliases", "run", "artifact", "registered (UTC)", "by")
    for v in versions:
        table.add_row(
            v.name,
            str(v.version),
            ", ".join(v.aliases) or "-",
            (v.run_id or "-")[:12],
            v.artifact_name or "-",
            when(v.created_at),
            v.created_by,
        )
    console().print(table)


@models_app.command("show")
def models_show(
    ref: str = typer.Argument(..., help="NAME, NAME:VERSION or NAME@ALIAS."),
) -> None:
    """Show one model version: source run, artifact hash, signature, aliases, deployments."""
    with open_cli_store() as store:
        v = store.get_model_version(ref)
        deployments = [d for d in store.list_deployments(v.name) if d.model_version_id == v.id]
    out = console()
    out.print(f"[bold]model {v.ref}[/]  aliases: {', '.join(v.aliases) or '-'}")
    out.print(f"registered {when(v.created_at)} UTC by {v.created_by}; run {v.run_id or '-'}")
    out.print(f"artifact {v.artifact_name}  sha256 {v.artifact_sha256}")
    out.print(f"signature {v.signature if v.signature else '-'}")
    for d in deployments:
        out.print(f"deployment {d.id}: {d.endpoint} ({d.status})")


@models_app.command("alias")
def models_alias(
    name: str = typer.Argument(..., help="Model name."),
    alias: str = typer.Argument(..., help="Alias, e.g. production or staging."),
    version: int = typer.Argument(..., help="The version the alias should point at."),
) -> None:
    """Point NAME@ALIAS at VERSION atomically (audited with the version it replaced)."""
    with open_cli_store() as store:
        replaced = store.set_alias(name, alias, version)
    before = f"{replaced}" if replaced is not None else "(new)"
    typer.echo(f"{name}@{alias}: {before} -> {version}")


@models_app.command("delete")
def models_delete(
    ref: str = typer.Argument(..., help="NAME:VERSION to delete."),
    force: bool = typer.Option(False, "--force", help="Also drop its aliases and deployments."),
) -> None:
    """Delete a model version; refused while deployed or aliased (unless --force)."""
    with open_cli_store() as store:
        version = store.get_model_version(ref)
        removed = store.delete_model_version(version.ref, force=force)
    suffix = f" (also removed: {', '.join(removed)})" if removed else ""
    typer.echo(f"deleted model {version.ref}{suffix}")


def lineage(
    ref: str = typer.Argument(..., help="MODEL, MODEL:VERSION or MODEL@ALIAS."),
) -> None:
    """Show where a model version came from (runs, datasets) and where it is deployed."""
    with open_cli_store() as store:
        graph = store.lineage_of(store.get_model_version(ref))
    root = graph.nodes[graph.root]
    tree = Tree(f"[bold]model {root.label}[/]")
    upstream = tree.add("came from")
    _grow(upstream, graph, graph.root, graph.parents, set())
    downstream = tree.add("used by")
    _grow(downstream, graph, graph.root, graph.children, set())
    console().print(tree)


def _grow(branch: Tree, graph: Any, key: tuple[str, str], step: Any, seen: set[Any]) -> None:
    nodes = step(key)
    if not nodes and not seen:
        branch.add("[dim](nothing recorded)[/]")
    for node in nodes:
        if node.key in seen:
            continue
        seen.add(node.key)
        child = branch.add(f"{_KIND_NAMES.get(node.kind, node.kind)} {node.label}")
        _grow(child, graph, node.key, step, seen)
