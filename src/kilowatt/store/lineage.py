"""Lineage: edges dataset -> run -> model version -> deployment, and the graph around a node.

Nodes are ``(kind, id)`` pairs: ``("dataset", "7")``, ``("run", "<hex>")``,
``("model_version", "3")``, ``("deployment", "2")``.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import sqlalchemy as sa

from kilowatt.errors import Conflict
from kilowatt.store import schema as t
from kilowatt.store._base import loads
from kilowatt.store.records import LineageEdge, LineageGraph, LineageNode, ModelVersion
from kilowatt.store.runs import RunsMixin

__all__ = ["LineageMixin", "NodeKey", "add_edge", "downstream_of"]

NodeKey = tuple[str, str]
_MAX_NODES = 10_000


def add_edge(connection: sa.Connection, src: NodeKey, dst: NodeKey, relation: str) -> None:
    """Record that ``src`` flowed into ``dst`` (recording it twice is harmless)."""
    exists = connection.execute(
        sa.select(t.lineage_edges.c.relation).where(
            t.lineage_edges.c.src_kind == src[0],
            t.lineage_edges.c.src_id == src[1],
            t.lineage_edges.c.dst_kind == dst[0],
            t.lineage_edges.c.dst_id == dst[1],
        )
    ).first()
    if exists is None:
        connection.execute(
            sa.insert(t.lineage_edges).values(
                src_kind=src[0],
                src_id=src[1],
                dst_kind=dst[0],
                dst_id=dst[1],
                relation=relation,
                created_at=time.time(),
            )
        )


def downstream_of(connection: sa.Connection, node: NodeKey) -> list[NodeKey]:
    """The nodes ``node`` has a direct edge into."""
    query = sa.select(t.lineage_edges.c.dst_kind, t.lineage_edges.c.dst_id).where(
        t.lineage_edges.c.src_kind == node[0], t.lineage_edges.c.src_id == node[1]
    )
    return [(kind, id_) for kind, id_ in connection.execute(query)]


def _upstream_of(connection: sa.Connection, node: NodeKey) -> list[NodeKey]:
    query = sa.select(t.lineage_edges.c.src_kind, t.lineage_edges.c.src_id).where(
        t.lineage_edges.c.dst_kind == node[0], t.lineage_edges.c.dst_id == node[1]
    )
    return [(kind, id_) for kind, id_ in connection.execute(query)]


def delete_edges(connection: sa.Connection, node: NodeKey) -> None:
    """Drop every edge into or out of ``node``."""
    edges = t.lineage_edges.c
    connection.execute(
        sa.delete(t.lineage_edges).where(
            sa.or_(
                sa.and_(edges.src_kind == node[0], edges.src_id == node[1]),
                sa.and_(edges.dst_kind == node[0], edges.dst_id == node[1]),
            )
        )
    )


class LineageMixin(RunsMixin):
    """The lineage graph, and deleting runs with a dependents check."""

    def lineage_of(self, node: NodeKey | ModelVersion) -> LineageGraph:
        """Everything upstream (datasets, runs) and downstream (deployments) of ``node``."""
        root = ("model_version", str(node.id)) if isinstance(node, ModelVersion) else node
        with self._engine.connect() as connection:
            keys = _walk(connection, root, _upstream_of) | _walk(connection, root, downstream_of)
            edges = _edges_among(connection, keys)
            nodes = {key: _describe(connection, key) for key in sorted(keys)}
        return LineageGraph(root=root, nodes=nodes, edges=tuple(edges))

    def delete_run(self, run_id: str, *, force: bool = False) -> list[str]:
        """Delete a run with its params, tags, metrics and artifact records; audited.

        Returns the dependents that were cut loose (only non-empty with ``force``).

        Raises:
            Conflict: the run produced model versions or datasets and ``force`` is not set;
                the message names them.
        """
        with self._write() as connection:
            row = self._run_row(connection, run_id)
            dependents = [
                f"{kind}:{describe_key(connection, (kind, id_))}"
                for kind, id_ in downstream_of(connection, ("run", row.id))
            ]
            if dependents and not force:
                raise Conflict(
                    f"run {row.id} has dependents: {', '.join(dependents)}; delete them first "
                    "or pass --force (force=True) to delete the run anyway"
                )
            for table in (t.params, t.tags, t.metric_chunks, t.artifacts):
                connection.execute(sa.delete(table).where(table.c.run_id == row.id))
            connection.execute(
                sa.update(t.model_versions)
                .where(t.model_versions.c.run_id == row.id)
                .values(run_id=None)
            )
            delete_edges(connection, ("run", row.id))
            connection.execute(sa.delete(t.runs).where(t.runs.c.id == row.id))
            self._audit(
                connection, "run.delete", f"run:{row.id}", force=force, dependents=dependents
            )
        return dependents


def _walk(connection: sa.Connection, root: NodeKey, step: Any) -> set[NodeKey]:
    seen, queue = {root}, deque([root])
    while queue and len(seen) < _MAX_NODES:
        for neighbour in step(connection, queue.popleft()):
            if neighbour not in seen:
                seen.add(neighbour)
                queue.append(neighbour)
    return seen


def _edges_among(connection: sa.Connection, keys: set[NodeKey]) -> list[LineageEdge]:
    edges = []
    for kind, id_ in sorted(keys):
        query = sa.select(t.lineage_edges).where(
            t.lineage_edges.c.src_kind == kind, t.lineage_edges.c.src_id == id_
        )
        for row in connection.execute(query):
            dst = (row.dst_kind, row.dst_id)
            if dst in keys:
                edges.append(LineageEdge((kind, id_), dst, row.relation))
    return edges


def describe_key(connection: sa.Connection, key: NodeKey) -> str:
    """A short human name for a node: ``name:version``, an endpoint, a run name."""
    return _describe(connection, key).label


def _describe(connection: sa.Connection, key: NodeKey) -> LineageNode:
    kind, id_ = key
    table = {
        "dataset": t.datasets,
        "run": t.runs,
        "model_version": t.model_versions,
        "deployment": t.deployments,
    }.get(kind)
    row = None
    if table is not None:
        ident: Any = id_ if kind == "run" else int(id_)
        row = connection.execute(sa.select(table).where(table.c.id == ident)).first()
    if row is None:
        return LineageNode(kind, id_, f"{kind} {id_} (deleted)")
    attributes = dict(row._mapping)
    if kind == "dataset":
        label = f"{row.name}:{row.version}"
        attributes["schema"] = loads(row.schema)
    elif kind == "run":
        label = f"{row.name} ({row.id[:8]}, {row.status})"
    elif kind == "model_version":
        label = f"{row.name}:{row.version}"
    else:
        label = f"{row.endpoint} ({row.status})"
    return LineageNode(kind, id_, label, attributes)
