"""Flexible jobs in the local queue: a flexible job waits for its planned window, a rigid
one does not; a window that closes unstarted ends the job as timed_out. The worker's clock
is a list the test moves, so nothing here waits for real hours."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from kilowatt.backends import JobRequest, LocalBackend
from kilowatt.backends.worker import LocalWorker
from kilowatt.errors import SpecError
from kilowatt.spec import Settings
from kilowatt.spec.backend import BackendSpec, CommandJobSpec
from kilowatt.store import Store, open_store

WINDOW_OPENS = dt.datetime(2026, 12, 1, 12, tzinfo=dt.UTC)
BEFORE = WINDOW_OPENS.timestamp() - 6 * 3600


@pytest.fixture
def store() -> Iterator[Store]:
    with open_store() as opened:
        yield opened


def _submit(name: str, workdir: Path, **backend: object) -> int:
    spec = CommandJobSpec(
        name=name, command=["sh", "-c", f"echo {name} >> ran.txt"], backend=backend
    )
    job = JobRequest("command", spec.model_dump(mode="json"), str(workdir))
    return int(LocalBackend().submit(job))


def _ran(workdir: Path) -> list[str]:
    ran = workdir / "ran.txt"
    return ran.read_text().split() if ran.exists() else []


def test_a_flexible_job_waits_for_its_window_and_a_rigid_one_does_not(
    store: Store, tmp_path: Path
) -> None:
    flexible = _submit(
        "flexible",
        tmp_path,
        flexible=True,
        not_before=WINDOW_OPENS.isoformat(),
        deadline=(WINDOW_OPENS + dt.timedelta(hours=8)).isoformat(),
        priority=9,  # first in line, yet it must not start before its window
    )
    rigid = _submit("rigid", tmp_path)
    now = [BEFORE]
    worker = LocalWorker(
        store, Settings.from_env(), devices=[], poll_interval_s=0.02, clock=lambda: now[0]
    )
    worker.run(until_idle=True)
    assert _ran(tmp_path) == ["rigid"]
    assert store.get_job(rigid).status == "succeeded"
    assert store.get_job(flexible).status == "queued"

    now[0] = WINDOW_OPENS.timestamp() + 60  # the planned window has opened
    worker.run(until_idle=True)
    assert _ran(tmp_path) == ["rigid", "flexible"]
    job = store.get_job(flexible)
    assert job.status == "succeeded"
    assert job.started_at == pytest.approx(WINDOW_OPENS.timestamp() + 60)


def test_a_window_that_closes_unstarted_times_the_job_out(store: Store, tmp_path: Path) -> None:
    late = _submit(
        "late",
        tmp_path,
        flexible=True,
        not_before=WINDOW_OPENS.isoformat(),
        deadline=(WINDOW_OPENS + dt.timedelta(hours=2)).isoformat(),
        max_runtime_s=3600,
    )
    # The worker first looks 90 minutes into the window: a one-hour job can no longer
    # finish by the deadline, so it is not started late.
    now = WINDOW_OPENS.timestamp() + 90 * 60
    worker = LocalWorker(store, Settings.from_env(), devices=[], clock=lambda: now)
    worker.run(until_idle=True)
    job = store.get_job(late)
    assert (job.status, job.started_at) == ("timed_out", None)
    assert "window closed" in (job.error or "")
    assert _ran(tmp_path) == []
    assert [e.action for e in store.list_audit()][-1] == "job.expire"


def test_the_store_claims_a_flexible_job_only_once_due(store: Store) -> None:
    opens = WINDOW_OPENS.timestamp()
    job = store.submit_job({"cmd": "x"}, name="f", flexible=True, not_before=opens)
    assert store.claim_next_job("w", now=opens - 1) is None
    claimed = store.claim_next_job("w", now=opens)
    assert claimed is not None and (claimed.id, claimed.status) == (job.id, "running")


def test_a_window_on_a_rigid_job_is_an_error_saying_how_to_fix_it(store: Store) -> None:
    with pytest.raises(ValueError, match="set flexible: true"):
        BackendSpec.model_validate({"not_before": WINDOW_OPENS.isoformat()})
    with pytest.raises(SpecError, match="set flexible: true"):
        store.submit_job({"cmd": "x"}, name="r", deadline=WINDOW_OPENS.timestamp())
