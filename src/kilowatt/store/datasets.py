"""Datasets: name, version, content fingerprint, source, size and schema; linked to runs."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Literal

import sqlalchemy as sa

from kilowatt.errors import Conflict, NotFound, SpecError
from kilowatt.store import schema as t
from kilowatt.store._base import dumps, loads
from kilowatt.store.lineage import LineageMixin, add_edge
from kilowatt.store.records import Dataset

__all__ = ["DatasetsMixin"]


class DatasetsMixin(LineageMixin):
    """Recording datasets and which runs read or wrote them."""

    def log_dataset(
        self,
        name: str,
        *,
        version: str,
        fingerprint: str,
        source_url: str | None = None,
        size_bytes: int | None = None,
        num_rows: int | None = None,
        schema: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        role: Literal["input", "output"] = "input",
    ) -> Dataset:
        """Record dataset ``name:version`` (once) and, with ``run_id``, link it to the run:
        dataset -> run for an input, run -> dataset for an output.

        Raises:
            Conflict: ``name:version`` is already recorded with another fingerprint.
        """
        if role not in ("input", "output"):
            raise SpecError(f"dataset role {role!r} must be 'input' or 'output'")
        if not name or not version or not fingerprint:
            raise SpecError("a dataset needs a name, a version and a fingerprint")
        with self._write() as connection:
            row = self._dataset_row(connection, name, version)
            if row is not None and row.fingerprint != fingerprint:
                raise Conflict(
                    f"dataset {name}:{version} is already recorded with fingerprint "
                    f"{row.fingerprint[:16]}, not {fingerprint[:16]}; record changed data as a "
                    "new version"
                )
            if row is None:
                connection.execute(
                    sa.insert(t.datasets).values(
                        name=name,
                        version=version,
                        fingerprint=fingerprint,
                        source_url=source_url,
                        size_bytes=size_bytes,
                        num_rows=num_rows,
                        schema=dumps(schema) if schema is not None else None,
                        created_at=time.time(),
                    )
                )
                row = self._dataset_row(connection, name, version)
                self._audit(connection, "dataset.create", f"dataset:{name}:{version}")
            if run_id is not None:
                run = self._run_row(connection, run_id)
                node, run_node = ("dataset", str(row.id)), ("run", run.id)
                src, dst = (node, run_node) if role == "input" else (run_node, node)
                add_edge(connection, src, dst, role)
        return _to_dataset(row)

    def get_dataset(self, name: str, version: str | None = None) -> Dataset:
        """Dataset ``name:version``, or the newest version of ``name``."""
        query = sa.select(t.datasets).where(t.datasets.c.name == name)
        if version is not None:
            query = query.where(t.datasets.c.version == version)
        with self._engine.connect() as connection:
            row = connection.execute(query.order_by(t.datasets.c.id.desc()).limit(1)).first()
        if row is None:
            raise NotFound(f"no dataset {name}:{version or '(any version)'} is recorded")
        return _to_dataset(row)

    def list_datasets(self, name: str | None = None) -> list[Dataset]:
        """Recorded datasets, by name then recording order."""
        query = sa.select(t.datasets).order_by(t.datasets.c.name, t.datasets.c.id)
        if name is not None:
            query = query.where(t.datasets.c.name == name)
        with self._engine.connect() as connection:
            return [_to_dataset(row) for row in connection.execute(query)]

    @staticmethod
    def _dataset_row(connection: sa.Connection, name: str, version: str) -> Any:
        return connection.execute(
            sa.select(t.datasets).where(t.datasets.c.name == name, t.datasets.c.version == version)
        ).first()


def _to_dataset(row: Any) -> Dataset:
    return Dataset(
        id=row.id,
        name=row.name,
        version=row.version,
        fingerprint=row.fingerprint,
        source_url=row.source_url,
        size_bytes=row.size_bytes,
        num_rows=row.num_rows,
        schema=loads(row.schema),
        created_at=row.created_at,
    )
