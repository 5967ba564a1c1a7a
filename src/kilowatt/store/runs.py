"""Projects and runs: create, finish, tag, parametrise, query and delete."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from kilowatt.errors import Conflict, NotFound, SpecError
from kilowatt.store import schema as t
from kilowatt.store._base import StoreBase, dumps, loads
from kilowatt.store.records import Project, Run, RunStatus

__all__ = ["ENVIRONMENT_FIELDS", "RUN_STATUSES", "MetricFilter", "RunsMixin"]

RUN_STATUSES: tuple[str, ...] = ("running", "finished", "failed", "killed")
ENVIRONMENT_FIELDS = (
    "git_commit",
    "git_diff_sha256",
    "host",
    "python_version",
    "torch_version",
    "cuda_version",
)
# (key, operator, value) on the run's latest value of a metric, e.g. ("loss", "<", 0.5).
MetricFilter = tuple[str, str, float]
_OPERATORS = {
    "<": lambda c, v: c < v,
    "<=": lambda c, v: c <= v,
    ">": lambda c, v: c > v,
    ">=": lambda c, v: c >= v,
    "=": lambda c, v: c == v,
    "==": lambda c, v: c == v,
    "!=": lambda c, v: c != v,
}


def param_text(value: Any) -> str:
    """Params and tags are stored as text: strings as they are, everything else as JSON."""
    return value if isinstance(value, str) else dumps(value)


class RunsMixin(StoreBase):
    """Projects and runs."""

    def get_or_create_project(self, name: str) -> Project:
        """The project called ``name``, created (and audited) on first use."""
        if not name or len(name) > 200:
            raise SpecError(f"project name {name!r} must be 1 to 200 characters")
        with self._write() as connection:
            row = connection.execute(sa.select(t.projects).where(t.projects.c.name == name)).first()
            if row is None:
                now = time.time()
                result = connection.execute(sa.insert(t.projects).values(name=name, created_at=now))
                self._audit(connection, "project.create", f"project:{name}")
                return Project(int(result.inserted_primary_key[0]), name, now)
        return Project(row.id, row.name, row.created_at)

    def list_projects(self) -> list[Project]:
        """Every project, by name."""
        with self._engine.connect() as connection:
            rows = connection.execute(sa.select(t.projects).order_by(t.projects.c.name))
            return [Project(r.id, r.name, r.created_at) for r in rows]

    def create_run(
        self,
        project: str,
        *,
        name: str | None = None,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        environment: Mapping[str, Any] | None = None,
    ) -> Run:
        """Start a run (status ``running``) in ``project``; audited as ``run.create``."""
        project_id = self.get_or_create_project(project).id
        run_id, env = uuid.uuid4().hex, dict(environment or {})
        values = {key: env.get(key) for key in ENVIRONMENT_FIELDS}
        with self._write() as connection:
            connection.execute(
                sa.insert(t.runs).values(
                    id=run_id,
                    project_id=project_id,
                    name=name or f"run-{run_id[:8]}",
                    status="running",
                    user=self._actor,
                    start_time=time.time(),
                    accelerators=dumps(env.get("accelerators", [])),
                    **values,
                )
            )
            self._insert_pairs(connection, t.params, run_id, params or {})
            self._insert_pairs(connection, t.tags, run_id, tags or {})
            self._audit(connection, "run.create", f"run:{run_id}", project=project)
        return self.get_run(run_id)

    def get_run(self, run_id: str) -> Run:
        """The run with id ``run_id`` (a unique prefix of at least 6 characters also works)."""
        with self._engine.connect() as connection:
            row = self._run_row(connection, run_id)
            return self._to_runs(connection, [row])[0]

    def list_runs(
        self,
        project: str | None = None,
        *,
        status: RunStatus | None = None,
        tags: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        metrics: Sequence[MetricFilter] = (),
        limit: int = 100,
    ) -> list[Run]:
        """Runs, newest first, matching every filter given.

        ``metrics`` filters on each run's latest value (highest step) of a metric:
        ``list_runs("demo", metrics=[("loss", "<", 0.5)])``.
        """
        query = sa.select(t.runs, t.projects.c.name.label("project")).join(
            t.projects, t.projects.c.id == t.runs.c.project_id
        )
        if project is not None:
            query = query.where(t.projects.c.name == project)
        if status is not None:
            query = query.where(t.runs.c.status == status)
        for table, pairs in ((t.tags, tags), (t.params, params)):
            for key, value in (pairs or {}).items():
                query = query.where(
                    sa.exists().where(
                        table.c.run_id == t.runs.c.id,
                        table.c.key == key,
                        table.c.value == param_text(value),
                    )
                )
        for key, operator, value in metrics:
            query = query.where(_metric_condition(key, operator, value))
        query = query.order_by(t.runs.c.start_time.desc()).limit(limit)
        with self._engine.connect() as connection:
            return self._to_runs(connection, list(connection.execute(query)))

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        """Record parameters; a parameter is set once (same value again is fine).

        Raises:
            Conflict: a parameter already has a different value.
        """
        with self._write() as connection:
            self._run_row(connection, run_id)
            existing = dict(
                connection.execute(
                    sa.select(t.params.c.key, t.params.c.value).where(t.params.c.run_id == run_id)
                ).all()
            )
            fresh = {}
            for key, value in params.items():
                text = param_text(value)
                if key in existing and existing[key] != text:
                    raise Conflict(
                        f"param {key!r} of run {run_id} is already {existing[key]!r}, not "
                        f"{text!r}; params are fixed once logged (use a tag for changing values)"
                    )
                if key not in existing:
                    fresh[key] = text
            self._insert_pairs(connection, t.params, run_id, fresh)

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        """Set (or overwrite) tags on a run."""
        with self._write() as connection:
            self._run_row(connection, run_id)
            keys = list(tags)
            connection.execute(
                sa.delete(t.tags).where(t.tags.c.run_id == run_id, t.tags.c.key.in_(keys))
            )
            self._insert_pairs(connection, t.tags, run_id, tags)

    def set_run_usage(
        self,
        run_id: str,
        *,
        time_s: float | None = None,
        energy_j: float | None = None,
        cost_usd: float | None = None,
        carbon_gco2e: float | None = None,
        method: str | None = None,
    ) -> None:
        """Record a run's summary figures; ``method`` says how energy was obtained
        (``measured-nvml``, ``measured-rapl``, ``estimated-tdp``, ...)."""
        values = {
            "time_s": time_s,
            "energy_j": energy_j,
            "cost_usd": cost_usd,
            "carbon_gco2e": carbon_gco2e,
            "usage_method": method,
        }
        values = {key: value for key, value in values.items() if value is not None}
        if not values:
            return
        with self._write() as connection:
            self._run_row(connection, run_id)
            connection.execute(sa.update(t.runs).where(t.runs.c.id == run_id).values(**values))

    def finish_run(self, run_id: str, status: RunStatus = "finished") -> Run:
        """End a run with ``status`` (finished, failed or killed); audited as ``run.finish``."""
        if status not in RUN_STATUSES[1:]:
            raise SpecError(f"run status {status!r} is not one of finished, failed, killed")
        with self._write() as connection:
            row = self._run_row(connection, run_id)
            connection.execute(
                sa.update(t.runs)
                .where(t.runs.c.id == row.id)
                .values(status=status, end_time=time.time())
            )
            self._audit(connection, "run.finish", f"run:{row.id}", status=status)
        return self.get_run(row.id)

    def _run_row(self, connection: sa.Connection, run_id: str) -> Any:
        query = sa.select(t.runs, t.projects.c.name.label("project")).join(
            t.projects, t.projects.c.id == t.runs.c.project_id
        )
        row = connection.execute(query.where(t.runs.c.id == run_id)).first()
        if row is None and 6 <= len(run_id) < 32:
            rows = connection.execute(
                query.where(t.runs.c.id.startswith(run_id, autoescape=True)).limit(2)
            ).all()
            row = rows[0] if len(rows) == 1 else None
        if row is None:
            raise NotFound(
                f"no run {run_id!r} in the store at {self.url}; list runs with `kilowatt runs list`"
            )
        return row

    def _to_runs(self, connection: sa.Connection, rows: Sequence[Any]) -> list[Run]:
        ids = [row.id for row in rows]
        params = _pairs_by_run(connection, t.params, ids)
        tags = _pairs_by_run(connection, t.tags, ids)
        return [_to_run(row, params.get(row.id, {}), tags.get(row.id, {})) for row in rows]

    @staticmethod
    def _insert_pairs(
        connection: sa.Connection, table: sa.Table, run_id: str, pairs: Mapping[str, Any]
    ) -> None:
        rows = [{"run_id": run_id, "key": k, "value": param_text(v)} for k, v in pairs.items()]
        for row in rows:
            if not row["key"] or len(row["key"]) > 250:
                raise SpecError(f"key {row['key']!r} must be 1 to 250 characters")
        if rows:
            connection.execute(sa.insert(table), rows)


def _metric_condition(key: str, operator: str, value: float) -> sa.ColumnElement[bool]:
    if operator not in _OPERATORS:
        raise SpecError(f"metric operator {operator!r} is not one of {', '.join(_OPERATORS)}")
    chunks = t.metric_chunks.c
    latest = (
        sa.select(chunks.last_value)
        .where(chunks.run_id == t.runs.c.id, chunks.key == key)
        .order_by(chunks.last_step.desc(), chunks.last_time.desc())
        .limit(1)
        .scalar_subquery()
    )
    return _OPERATORS[operator](latest, value)


def _pairs_by_run(
    connection: sa.Connection, table: sa.Table, run_ids: Iterable[str]
) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    ids = list(run_ids)
    for start in range(0, len(ids), 500):  # stay under bound-parameter limits
        query = sa.select(table).where(table.c.run_id.in_(ids[start : start + 500]))
        for row in connection.execute(query):
            found.setdefault(row.run_id, {})[row.key] = row.value
    return found


def _to_run(row: Any, params: dict[str, str], tags: dict[str, str]) -> Run:
    environment: dict[str, Any] = {key: getattr(row, key) for key in ENVIRONMENT_FIELDS}
    environment["accelerators"] = loads(row.accelerators) or []
    return Run(
        id=row.id,
        project=row.project,
        name=row.name,
        status=row.status,
        user=row.user,
        start_time=row.start_time,
        end_time=row.end_time,
        params=params,
        tags=tags,
        environment=environment,
        time_s=row.time_s,
        energy_j=row.energy_j,
        cost_usd=row.cost_usd,
        carbon_gco2e=row.carbon_gco2e,
        usage_method=row.usage_method,
    )
