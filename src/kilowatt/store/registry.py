"""The model registry: versions, aliases (atomic, audited moves), deployments, deletion.

A model is referred to as ``name`` (latest version), ``name:3`` (a version) or
``name@production`` / ``name:production`` (an alias).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa

from kilowatt.errors import Conflict, NotFound, SpecError
from kilowatt.store import schema as t
from kilowatt.store._base import dumps, loads
from kilowatt.store.lineage import LineageMixin, add_edge, delete_edges, downstream_of
from kilowatt.store.records import Deployment, ModelVersion

__all__ = ["ALIAS_PATTERN", "RegistryMixin", "is_model_ref", "parse_model_ref"]

ALIAS_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_REGISTER_TRIES = 5
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")


def parse_model_ref(ref: str) -> tuple[str, int | None, str | None]:
    """Split ``name``, ``name:3``, ``name@alias`` or ``name:alias`` into (name, version, alias)."""
    name, sep, rest = ref.partition("@")
    if not sep:
        name, sep, rest = ref.rpartition(":") if ":" in ref else (ref, "", "")
    if not name:
        raise SpecError(f"model reference {ref!r} is empty; use NAME, NAME:VERSION or NAME@ALIAS")
    if not sep:
        return name, None, None
    if rest.isdigit():
        return name, int(rest), None
    return name, None, rest


def is_model_ref(ref: str) -> bool:
    """Whether ``ref`` could name a registered model (``name``, ``name:3``, ``name@alias``).

    >>> is_model_ref("mlp@production"), is_model_ref("/tmp/mlp.pt")
    (True, False)
    """
    try:
        name, _, alias = parse_model_ref(ref)
    except SpecError:
        return False
    return bool(_NAME_PATTERN.match(name)) and (alias is None or bool(ALIAS_PATTERN.match(alias)))


def check_alias(alias: str) -> str:
    """Validate an alias name (lower case, starting with a letter, not a number)."""
    if not ALIAS_PATTERN.match(alias) or alias == "latest":
        raise SpecError(
            f"alias {alias!r} is invalid: use 1-63 characters of a-z, 0-9, '-' or '_', starting "
            "with a letter (e.g. production, staging); 'latest' is reserved"
        )
    return alias


class RegistryMixin(LineageMixin):
    """Model versions, aliases and deployments."""

    def register_model(
        self,
        name: str,
        *,
        run_id: str,
        artifact: str,
        signature: Mapping[str, Any] | None = None,
        aliases: Iterable[str] = (),
        version: int | None = None,
    ) -> ModelVersion:
        """Register artifact ``artifact`` of run ``run_id`` as the next version of ``name``.

        Raises:
            NotFound: the run or its artifact does not exist.
            Conflict: ``version`` is given and already registered.
            SpecError: a bad model name or alias.
        """
        if not _NAME_PATTERN.match(name):
            raise SpecError(
                f"model name {name!r} is invalid: use letters, digits, '.', '_', '/' or '-'"
            )
        aliases = [check_alias(alias) for alias in aliases]
        stored = self.get_artifact(run_id, artifact)  # type: ignore[attr-defined]
        for attempt in range(_REGISTER_TRIES):
            try:
                number = self._insert_version(name, run_id, stored, signature, aliases, version)
                break
            except sa.exc.IntegrityError:
                # another process registered the same number first: take the next one
                if version is not None or attempt == _REGISTER_TRIES - 1:
                    raise Conflict(
                        f"model {name} version {version or '(next)'} was registered by someone "
                        "else at the same time; try again"
                    ) from None
        return self.get_model_version(f"{name}:{number}")

    def _insert_version(
        self,
        name: str,
        run_id: str,
        stored: Any,
        signature: Mapping[str, Any] | None,
        aliases: list[str],
        version: int | None,
    ) -> int:
        with self._write() as connection:
            _lock_model_name(connection, name)
            run = self._run_row(connection, run_id)
            latest = connection.execute(
                sa.select(sa.func.max(t.model_versions.c.version)).where(
                    t.model_versions.c.name == name
                )
            ).scalar()
            if version is not None and _version_id(connection, name, version) is not None:
                raise Conflict(
                    f"model {name} already has version {version}; omit the version to "
                    f"register {name}:{(latest or 0) + 1}"
                )
            number = version if version is not None else (latest or 0) + 1
            result = connection.execute(
                sa.insert(t.model_versions).values(
                    name=name,
                    version=number,
                    run_id=run.id,
                    artifact_name=stored.name,
                    artifact_sha256=stored.sha256,
                    signature=dumps(signature) if signature else None,
                    created_at=time.time(),
                    created_by=self._actor,
                )
            )
            version_id = int(result.inserted_primary_key[0])
            add_edge(connection, ("run", run.id), ("model_version", str(version_id)), "produced")
            self._audit(
                connection,
                "model.register",
                f"model:{name}:{number}",
                run_id=run.id,
                artifact=stored.name,
                sha256=stored.sha256,
            )
            for alias in aliases:
                self._move_alias(connection, name, alias, version_id, number)
        return number

    def get_model_version(self, ref: str) -> ModelVersion:
        """Resolve ``name``, ``name:3``, ``name@alias`` or ``name:alias``.

        Raises:
            NotFound: naming the versions or aliases that do exist.
        """
        name, version, alias = parse_model_ref(ref)
        with self._engine.connect() as connection:
            row = self._resolve(connection, name, version, alias)
            return self._to_versions(connection, [row])[0]

    def list_model_versions(self, name: str | None = None) -> list[ModelVersion]:
        """Every version of ``name`` (or of every model), by name then version."""
        query = sa.select(t.model_versions).order_by(
            t.model_versions.c.name, t.model_versions.c.version
        )
        if name is not None:
            query = query.where(t.model_versions.c.name == name)
        with self._engine.connect() as connection:
            return self._to_versions(connection, list(connection.execute(query)))

    def set_alias(self, name: str, alias: str, version: int) -> int | None:
        """Point ``name@alias`` at ``version`` in one transaction; return the version it
        replaced (None if new). Readers see the old or the new version, never none."""
        check_alias(alias)
        with self._write() as connection:
            version_id = _version_id(connection, name, version)
            if version_id is None:
                self._resolve(connection, name, version, None)  # raises NotFound with a hint
                raise AssertionError("unreachable")
            return self._move_alias(connection, name, alias, version_id, version)

    def delete_alias(self, name: str, alias: str) -> int:
        """Remove an alias; return the version it pointed at."""
        with self._write() as connection:
            row = self._resolve(connection, name, None, alias)
            connection.execute(
                sa.delete(t.model_aliases).where(
                    t.model_aliases.c.name == name, t.model_aliases.c.alias == alias
                )
            )
            self._audit(
                connection, "model.alias.delete", f"model:{name}@{alias}", version=row.version
            )
            return int(row.version)

    def _move_alias(
        self, connection: sa.Connection, name: str, alias: str, version_id: int, version: int
    ) -> int | None:
        aliases = t.model_aliases.c
        where = (aliases.name == name, aliases.alias == alias)
        old = connection.execute(
            sa.select(t.model_versions.c.version)
            .join(t.model_aliases, t.model_aliases.c.version_id == t.model_versions.c.id)
            .where(*where)
        ).scalar()
        # One UPDATE (or INSERT for a new alias) inside the transaction: the alias row is never
        # absent, so a concurrent reader sees either the old or the new version.
        values = {"version_id": version_id, "updated_at": time.time()}
        if old is None:
            connection.execute(sa.insert(t.model_aliases).values(name=name, alias=alias, **values))
        else:
            connection.execute(sa.update(t.model_aliases).where(*where).values(**values))
        self._audit(
            connection, "model.alias", f"model:{name}@{alias}", version=version, replaced=old
        )
        return old

    def delete_model_version(self, ref: str, *, force: bool = False) -> list[str]:
        """Delete a model version; audited. Returns the dependents removed with it.

        Raises:
            Conflict: it is deployed or holds an alias and ``force`` is not set (the message
                names the deployments and aliases).
        """
        name, version, alias = parse_model_ref(ref)
        with self._write() as connection:
            row = self._resolve(connection, name, version, alias)
            node = ("model_version", str(row.id))
            deployments = [int(id_) for kind, id_ in downstream_of(connection, node)]
            held = _aliases_of(connection, [row.id]).get(row.id, ())
            dependents = [f"deployment:{id_}" for id_ in deployments]
            dependents += [f"alias:{row.name}@{a}" for a in held]
            if dependents and not force:
                raise Conflict(
                    f"model {row.name}:{row.version} has dependents: {', '.join(dependents)}; "
                    "move the aliases and stop the deployments first, or pass --force"
                )
            connection.execute(
                sa.delete(t.model_aliases).where(t.model_aliases.c.version_id == row.id)
            )
            connection.execute(sa.delete(t.deployments).where(t.deployments.c.id.in_(deployments)))
            for id_ in deployments:
                delete_edges(connection, ("deployment", str(id_)))
            delete_edges(connection, node)
            connection.execute(sa.delete(t.model_versions).where(t.model_versions.c.id == row.id))
            self._audit(
                connection,
                "model.delete",
                f"model:{row.name}:{row.version}",
                force=force,
                dependents=dependents,
            )
        return dependents

    def create_deployment(self, ref: str, endpoint: str, status: str = "pending") -> Deployment:
        """Record that a model version is (being) served at ``endpoint``; audited as ``deploy``."""
        version = self.get_model_version(ref)
        now = time.time()
        with self._write() as connection:
            result = connection.execute(
                sa.insert(t.deployments).values(
                    model_version_id=version.id,
                    endpoint=endpoint,
                    status=status,
                    created_at=now,
                    updated_at=now,
                )
            )
            id_ = int(result.inserted_primary_key[0])
            add_edge(
                connection, ("model_version", str(version.id)), ("deployment", str(id_)), "deployed"
            )
            self._audit(
                connection, "deploy", f"deployment:{id_}", model=version.ref, endpoint=endpoint
            )
        return Deployment(id_, version.id, endpoint, status, now, now)

    def update_deployment(self, deployment_id: int, status: str) -> Deployment:
        """Change a deployment's status (e.g. running, stopped); audited."""
        with self._write() as connection:
            result = connection.execute(
                sa.update(t.deployments)
                .where(t.deployments.c.id == deployment_id)
                .values(status=status, updated_at=time.time())
            )
            if result.rowcount != 1:
                raise NotFound(f"no deployment {deployment_id}; list them with list_deployments()")
            self._audit(connection, "deploy.status", f"deployment:{deployment_id}", status=status)
        return self.list_deployments(deployment_id=deployment_id)[0]

    def list_deployments(
        self, model: str | None = None, *, deployment_id: int | None = None
    ) -> list[Deployment]:
        """Deployments, newest first, optionally of one model name or with one id."""
        query = sa.select(t.deployments).order_by(t.deployments.c.id.desc())
        if deployment_id is not None:
            query = query.where(t.deployments.c.id == deployment_id)
        if model is not None:
            ids = sa.select(t.model_versions.c.id).where(t.model_versions.c.name == model)
            query = query.where(t.deployments.c.model_version_id.in_(ids))
        with self._engine.connect() as connection:
            return [
                Deployment(
                    r.id, r.model_version_id, r.endpoint, r.status, r.created_at, r.updated_at
                )
                for r in connection.execute(query)
            ]

    def _resolve(
        self, connection: sa.Connection, name: str, version: int | None, alias: str | None
    ) -> Any:
        mv = t.model_versions
        query = sa.select(mv).where(mv.c.name == name)
        if alias is not None and alias != "latest":
            query = query.join(t.model_aliases, t.model_aliases.c.version_id == mv.c.id).where(
                t.model_aliases.c.alias == alias
            )
        elif version is not None:
            query = query.where(mv.c.version == version)
        row = connection.execute(query.order_by(mv.c.version.desc()).limit(1)).first()
        if row is None:
            raise NotFound(self._missing_model(connection, name, version, alias))
        return row

    def _missing_model(
        self, connection: sa.Connection, name: str, version: int | None, alias: str | None
    ) -> str:
        versions = (
            connection.execute(
                sa.select(t.model_versions.c.version)
                .where(t.model_versions.c.name == name)
                .order_by(t.model_versions.c.version)
            )
            .scalars()
            .all()
        )
        if not versions:
            return f"no model {name!r} is registered; list models with `kilowatt models list`"
        if alias is not None:
            held = (
                connection.execute(
                    sa.select(t.model_aliases.c.alias).where(t.model_aliases.c.name == name)
                )
                .scalars()
                .all()
            )
            return f"model {name} has no alias {alias!r}; its aliases: {', '.join(held) or 'none'}"
        return f"model {name} has no version {version}; its versions: {versions}"

    def _to_versions(self, connection: sa.Connection, rows: list[Any]) -> list[ModelVersion]:
        aliases = _aliases_of(connection, [row.id for row in rows])
        return [
            ModelVersion(
                id=r.id,
                name=r.name,
                version=r.version,
                run_id=r.run_id,
                artifact_name=r.artifact_name,
                artifact_sha256=r.artifact_sha256,
                signature=loads(r.signature),
                created_at=r.created_at,
                created_by=r.created_by,
                aliases=tuple(sorted(aliases.get(r.id, ()))),
            )
            for r in rows
        ]


def _lock_model_name(connection: sa.Connection, name: str) -> None:
    """Serialise registrations of one model on PostgreSQL (SQLite's write lock already does)."""
    if connection.dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def _version_id(connection: sa.Connection, name: str, version: int) -> int | None:
    return connection.execute(
        sa.select(t.model_versions.c.id).where(
            t.model_versions.c.name == name, t.model_versions.c.version == version
        )
    ).scalar()


def _aliases_of(connection: sa.Connection, version_ids: list[int]) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    if not version_ids:
        return found
    query = sa.select(t.model_aliases.c.version_id, t.model_aliases.c.alias).where(
        t.model_aliases.c.version_id.in_(version_ids)
    )
    for version_id, alias in connection.execute(query):
        found.setdefault(version_id, []).append(alias)
    return found
