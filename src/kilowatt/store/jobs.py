"""The job queue of the local backend: submit, claim (atomically), update, cancel.

``claim_next_job`` picks the highest priority, then the oldest, queued job that is due and
takes it with a conditional UPDATE (``... WHERE id = ? AND status = 'queued'``): when several
workers race for one job exactly one update matches, and the others try the next job.

A flexible job is due from its ``not_before``; one that can no longer start in time to end by
its ``deadline`` is marked ``timed_out`` instead of started late.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, get_args

import sqlalchemy as sa

from kilowatt.errors import NotFound, SpecError
from kilowatt.store import schema as t
from kilowatt.store._base import StoreBase, dumps, loads
from kilowatt.store.records import Job, JobStatus

__all__ = ["FINAL_JOB_STATUSES", "JOB_STATUSES", "JobsMixin"]

JOB_STATUSES: tuple[str, ...] = get_args(JobStatus)
FINAL_JOB_STATUSES = frozenset({"succeeded", "failed", "cancelled", "timed_out"})
_UPDATABLE = frozenset(
    {
        "status",
        "attempts",
        "devices",
        "pid",
        "worker_id",
        "run_id",
        "log_artifact",
        "exit_code",
        "error",
        "time_s",
        "energy_j",
        "cost_usd",
        "carbon_gco2e",
        "cancel_requested",
        "started_at",
        "finished_at",
        "priority",
    }
)
_CLAIM_TRIES = 20


class JobsMixin(StoreBase):
    """A durable priority queue of jobs."""

    def submit_job(
        self,
        spec: Mapping[str, Any],
        *,
        name: str,
        priority: int = 0,
        max_attempts: int = 1,
        max_runtime_s: float | None = None,
        flexible: bool = False,
        not_before: float | None = None,
        deadline: float | None = None,
    ) -> Job:
        """Queue a job; audited as ``job.submit``. Higher ``priority`` runs first.

        A ``flexible`` job waits for ``not_before`` (epoch seconds) and must be able to end
        by ``deadline`` (``max_runtime_s`` before it is the latest start)."""
        _check_window(flexible, not_before, deadline)
        if max_attempts < 1:
            raise SpecError(f"max_attempts={max_attempts} must be at least 1")
        if max_runtime_s is not None and max_runtime_s <= 0:
            raise SpecError(f"max_runtime_s={max_runtime_s} must be positive (or None)")
        now = time.time()
        with self._write() as connection:
            result = connection.execute(
                sa.insert(t.jobs).values(
                    name=name,
                    spec=dumps(dict(spec)),
                    priority=priority,
                    status="queued",
                    attempts=0,
                    max_attempts=max_attempts,
                    max_runtime_s=max_runtime_s,
                    time_s=0.0,
                    energy_j=0.0,
                    cost_usd=0.0,
                    carbon_gco2e=0.0,
                    cancel_requested=False,
                    flexible=flexible,
                    not_before=not_before,
                    deadline=deadline,
                    submitted_at=now,
                    updated_at=now,
                    created_by=self._actor,
                )
            )
            job_id = int(result.inserted_primary_key[0])
            self._audit(connection, "job.submit", f"job:{job_id}", name=name, priority=priority)
        return self.get_job(job_id)

    def claim_next_job(self, worker_id: str, now: float | None = None) -> Job | None:
        """Take the next due queued job for ``worker_id`` (status -> running, attempts + 1).

        ``now`` (epoch seconds, default the clock) decides which flexible jobs are due."""
        jobs = t.jobs.c
        now = time.time() if now is None else now
        due = sa.or_(jobs.flexible.is_(False), jobs.not_before.is_(None), jobs.not_before <= now)
        for _ in range(_CLAIM_TRIES):
            with self._write() as connection:
                self._expire_missed(connection, now)
                job_id = connection.execute(
                    sa.select(jobs.id)
                    .where(jobs.status == "queued", due)
                    .order_by(jobs.priority.desc(), jobs.id)
                    .limit(1)
                ).scalar()
                if job_id is None:
                    return None
                claimed = connection.execute(
                    sa.update(t.jobs)
                    .where(jobs.id == job_id, jobs.status == "queued")
                    .values(
                        status="running",
                        worker_id=worker_id,
                        attempts=jobs.attempts + 1,
                        started_at=now,
                        finished_at=None,
                        updated_at=now,
                    )
                ).rowcount
            if claimed == 1:
                return self.get_job(job_id)
        return None  # lost every race; the caller polls again

    def expire_missed_windows(self, now: float | None = None) -> list[int]:
        """Mark ``timed_out`` the queued flexible jobs that can no longer start in time to
        end by their deadline; returns their ids."""
        with self._write() as connection:
            return self._expire_missed(connection, time.time() if now is None else now)

    def _expire_missed(self, connection: sa.Connection, now: float) -> list[int]:
        jobs = t.jobs.c
        latest_start = jobs.deadline - sa.func.coalesce(jobs.max_runtime_s, 0.0)
        missed = connection.execute(
            sa.select(jobs.id).where(
                jobs.status == "queued", jobs.flexible.is_(True), latest_start < now
            )
        ).scalars()
        expired = []
        for job_id in missed.all():
            updated = connection.execute(
                sa.update(t.jobs)
                .where(jobs.id == job_id, jobs.status == "queued")
                .values(
                    status="timed_out",
                    error="its window closed before it could start and end by its deadline",
                    finished_at=now,
                    updated_at=now,
                )
            ).rowcount
            if updated == 1:  # not claimed or cancelled meanwhile
                self._audit(connection, "job.expire", f"job:{job_id}")
                expired.append(job_id)
        return expired

    def update_job(self, job_id: int, **fields: Any) -> Job:
        """Set fields of a job (status, pid, devices, exit_code, run_id, ...)."""
        unknown = set(fields) - _UPDATABLE
        if unknown:
            raise SpecError(
                f"job fields {sorted(unknown)} cannot be updated; use {sorted(_UPDATABLE)}"
            )
        if "status" in fields and fields["status"] not in JOB_STATUSES:
            raise SpecError(f"job status {fields['status']!r} is not one of {JOB_STATUSES}")
        if "devices" in fields:
            fields["devices"] = None if fields["devices"] is None else dumps(fields["devices"])
        self._update_job(job_id, {**fields, "updated_at": time.time()})
        return self.get_job(job_id)

    def add_job_usage(
        self,
        job_id: int,
        *,
        time_s: float = 0.0,
        energy_j: float = 0.0,
        cost_usd: float = 0.0,
        carbon_gco2e: float = 0.0,
    ) -> Job:
        """Add one attempt's usage to the job's totals (totals sum over attempts)."""
        jobs = t.jobs.c
        self._update_job(
            job_id,
            {
                "time_s": jobs.time_s + time_s,
                "energy_j": jobs.energy_j + energy_j,
                "cost_usd": jobs.cost_usd + cost_usd,
                "carbon_gco2e": jobs.carbon_gco2e + carbon_gco2e,
                "updated_at": time.time(),
            },
        )
        return self.get_job(job_id)

    def request_cancel(self, job_id: int) -> Job:
        """Cancel a queued job at once, or ask the worker of a running job to stop it.
        Audited as ``job.cancel``; a finished job is left as it is."""
        jobs = t.jobs.c
        now = time.time()
        with self._write() as connection:
            status = self._job_status(connection, job_id)
            if status == "queued":
                connection.execute(
                    sa.update(t.jobs)
                    .where(jobs.id == job_id)
                    .values(
                        status="cancelled", cancel_requested=True, finished_at=now, updated_at=now
                    )
                )
            elif status == "running":
                connection.execute(
                    sa.update(t.jobs)
                    .where(jobs.id == job_id)
                    .values(cancel_requested=True, updated_at=now)
                )
            self._audit(connection, "job.cancel", f"job:{job_id}", status=status)
        return self.get_job(job_id)

    def get_job(self, job_id: int) -> Job:
        """The job with id ``job_id``."""
        with self._engine.connect() as connection:
            row = connection.execute(sa.select(t.jobs).where(t.jobs.c.id == job_id)).first()
        if row is None:
            raise NotFound(f"no job {job_id}; list jobs with `kilowatt jobs list`")
        return _to_job(row)

    def list_jobs(self, *, status: str | None = None, limit: int = 100) -> list[Job]:
        """Jobs, newest first, optionally with one status."""
        query = sa.select(t.jobs).order_by(t.jobs.c.id.desc()).limit(limit)
        if status is not None:
            query = query.where(t.jobs.c.status == status)
        with self._engine.connect() as connection:
            return [_to_job(row) for row in connection.execute(query)]

    def _update_job(self, job_id: int, values: dict[str, Any]) -> None:
        with self._write() as connection:
            result = connection.execute(
                sa.update(t.jobs).where(t.jobs.c.id == job_id).values(**values)
            )
            if result.rowcount != 1:
                raise NotFound(f"no job {job_id}; list jobs with `kilowatt jobs list`")

    @staticmethod
    def _job_status(connection: sa.Connection, job_id: int) -> str:
        status = connection.execute(
            sa.select(t.jobs.c.status).where(t.jobs.c.id == job_id)
        ).scalar()
        if status is None:
            raise NotFound(f"no job {job_id}; list jobs with `kilowatt jobs list`")
        return str(status)


def _check_window(flexible: bool, not_before: float | None, deadline: float | None) -> None:
    if not flexible and (not_before is not None or deadline is not None):
        raise SpecError(
            "not_before and deadline are for flexible jobs; a rigid job starts as soon as the "
            "queue reaches it; set flexible: true to give the job a window"
        )
    if not_before is not None and deadline is not None and not_before >= deadline:
        raise SpecError(f"not_before ({not_before}) must be before the deadline ({deadline})")


def _to_job(row: Any) -> Job:
    values = dict(row._mapping)
    values["flexible"] = bool(values["flexible"])
    values["spec"] = loads(values["spec"])
    values["devices"] = loads(values["devices"])
    values["cancel_requested"] = bool(values["cancel_requested"])
    return Job(**values)
