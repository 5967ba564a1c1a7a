"""The local job queue's worker: runs queued jobs as processes, by priority.

Each tick the worker reaps finished attempts, stops jobs that were cancelled or ran past
their ``max_runtime_s``, and starts the highest-priority queued jobs that fit the free
accelerators and job slots. A job that needs more devices than are free waits (and the
jobs behind it wait too), so a big job is never starved by a stream of small ones.

Every attempt is accounted by the worker from the process's own resource usage (wall
seconds, CPU seconds x watts per core), priced by the job's instance and region, and added
to the job's totals, so a job retried three times costs what its three attempts cost.

    >>> worker = LocalWorker(open_store(), devices=["0", "1"], max_parallel=2)  # doctest: +SKIP
    >>> worker.run(until_idle=True)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kilowatt.backends.devices import DevicePool, detect_devices
from kilowatt.backends.job import JobRequest, write_job_file
from kilowatt.backends.process import Exit, JobProcess
from kilowatt.errors import KilowattError
from kilowatt.host import available_cores
from kilowatt.meter import Accountant, Measurement, cpu_watts_per_core
from kilowatt.signals import handling_signals
from kilowatt.spec import Settings
from kilowatt.store import Job, Store

__all__ = ["EXIT_PREEMPTED", "LocalWorker", "job_folder"]

_log = logging.getLogger("kilowatt.backends")
_ERROR_TAIL_BYTES = 2000
#: ``kilowatt.train.EXIT_PREEMPTED``, spelled out so the worker does not load torch.
EXIT_PREEMPTED = 75
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "KILOWATT_THREADS")


def job_folder(settings: Settings, job_id: int) -> Path:
    """Where a job's spec, logs and (by default) checkpoints live on this machine."""
    return settings.home / "jobs" / str(job_id)


@dataclass
class _Attempt:
    job: Job
    request: JobRequest
    process: JobProcess
    devices: list[str]
    stop_reason: str | None = None  # "cancelled" or "timed_out" once a stop was sent
    kill_at_s: float | None = None


class LocalWorker:
    """Runs the store's queued jobs on this machine.

    Args:
        store: the store holding the queue.
        settings: where job folders go and what store URL jobs are given.
        devices: accelerator ids to assign exclusively (default: detected; tests pass fake
            lists).
        max_parallel: most jobs running at once.
        cpu_threads: CPU threads a job gets unless its spec says (default: cores shared
            evenly over ``max_parallel``).
        catalog: prices and power figures for the jobs' instances and regions.
        poll_interval_s: seconds between ticks.
        stop_grace_s: after SIGTERM (cancel, timeout), seconds before SIGKILL.
        worker_id: names this worker in the queue.
        clock: epoch seconds now; decides when flexible jobs' windows open and close.
    """

    def __init__(
        self,
        store: Store,
        settings: Settings | None = None,
        *,
        devices: Sequence[str] | None = None,
        max_parallel: int = 1,
        cpu_threads: int | None = None,
        catalog: Any = None,
        poll_interval_s: float = 0.5,
        stop_grace_s: float = 10.0,
        worker_id: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_parallel < 1:
            raise KilowattError(f"max_parallel={max_parallel} must be at least 1")
        self.store = store
        self.settings = settings or Settings.from_env()
        self.pool = DevicePool(detect_devices() if devices is None else list(devices))
        self.max_parallel = max_parallel
        self.cpu_threads = cpu_threads or max(1, available_cores() // max_parallel)
        self.catalog = catalog
        self.poll_interval_s = poll_interval_s
        self.stop_grace_s = stop_grace_s
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.running: dict[int, _Attempt] = {}
        self.clock = clock
        self._stopping = False

    # --- the loop

    def run(self, *, until_idle: bool = False, max_s: float | None = None) -> None:
        """Tick until SIGTERM/SIGINT (or, with ``until_idle``, until nothing due is queued
        and nothing runs: flexible jobs waiting for their window stay queued; or ``max_s``
        seconds). Running jobs are stopped and requeued on exit."""
        deadline = None if max_s is None else time.monotonic() + max_s
        with handling_signals(lambda signum, frame: self.stop()):  # stop; requeue running jobs
            try:
                while not self._stopping:
                    self.tick()
                    if until_idle and not self.running and self._next_queued() is None:
                        return
                    if deadline is not None and time.monotonic() >= deadline:
                        return
                    time.sleep(self.poll_interval_s)
            finally:
                self.shutdown()

    def stop(self) -> None:
        """Ask ``run`` to return after the current tick."""
        self._stopping = True

    def tick(self) -> None:
        """Reap, enforce cancel and runtime limits, then start what fits."""
        for attempt in list(self.running.values()):
            ended = attempt.process.poll()
            if ended is not None:
                self._finish(attempt, ended)
            else:
                self._enforce(attempt)
        while len(self.running) < self.max_parallel and self._start_next():
            pass

    def shutdown(self) -> None:
        """Stop every running job (SIGTERM, then SIGKILL after the grace) and requeue it."""
        for attempt in self.running.values():
            attempt.process.signal_group(signal.SIGTERM)
        for attempt in list(self.running.values()):
            ended = attempt.process.wait(self.stop_grace_s)
            if ended is None:
                attempt.process.signal_group(signal.SIGKILL)
                ended = attempt.process.wait(self.stop_grace_s)
            ended = ended or Exit(-signal.SIGKILL, 0.0, 0.0)
            self._account(attempt, ended)
            self._release(attempt)
            self.store.update_job(attempt.job.id, status="queued", pid=None, exit_code=ended.code)

    # --- starting

    def _next_queued(self) -> Job | None:
        now = self.clock()
        self.store.expire_missed_windows(now)
        queued = [j for j in self.store.list_jobs(status="queued", limit=10_000) if j.due(now)]
        return min(queued, key=lambda job: (-job.priority, job.id), default=None)

    def _start_next(self) -> bool:
        head = self._next_queued()
        if head is None:
            return False
        needed = JobRequest.from_dict(head.spec).backend.accelerators
        if len(self.pool.free) < needed <= self.pool.size:
            return False  # the head of the queue waits for devices; so do the jobs behind it
        job = self.store.claim_next_job(self.worker_id, now=self.clock())
        if job is None:
            return False
        request = JobRequest.from_dict(job.spec)
        try:
            devices = self.pool.acquire(job.id, request.backend.accelerators)
            if devices is None:  # another worker took the head first; put this one back
                self.store.update_job(job.id, status="queued", attempts=job.attempts - 1)
                return False
            self._launch(job, request, devices)
        except KilowattError as exc:  # e.g. more devices than this worker has, or no program
            self.pool.release(job.id)
            self.store.update_job(job.id, status="failed", error=str(exc), finished_at=time.time())
        return True

    def _launch(self, job: Job, request: JobRequest, devices: list[str]) -> None:
        folder = job_folder(self.settings, job.id)
        run_id = job.run_id or self._create_run(job, request)
        request = _for_attempt(request, folder, job.attempts)
        argv = self._argv(request, folder, run_id)
        env = self._environment(job, request, devices, run_id, folder)
        log_path = folder / f"attempt-{job.attempts}.log"
        process = JobProcess(argv, env=env, cwd=request.workdir, log_path=log_path)
        self.running[job.id] = _Attempt(job, request, process, devices)
        self.store.update_job(
            job.id, pid=process.pid, devices=devices, run_id=run_id, exit_code=None, error=None
        )
        _log.info("job %s attempt %s started as pid %s", job.id, job.attempts, process.pid)

    def _create_run(self, job: Job, request: JobRequest) -> str:
        spec = request.spec
        run = self.store.create_run(
            str(spec.get("project", "default")),
            name=f"{request.name}-job{job.id}",
            params={"job_id": job.id, "kind": request.kind},
            tags={"job_id": str(job.id), "backend": "local"},
        )
        return run.id

    def _argv(self, request: JobRequest, folder: Path, run_id: str) -> list[str]:
        if request.kind == "command":
            return list(request.spec["command"])
        prices = self._accountant(request).__dict__
        path = write_job_file(folder / "job.json", request, run_id, dict(prices))
        return [sys.executable, "-m", "kilowatt.backends.child", str(path)]

    def _environment(
        self, job: Job, request: JobRequest, devices: list[str], run_id: str, folder: Path
    ) -> dict[str, str]:
        threads = str(request.backend.cpu_threads or self.cpu_threads)
        env = {
            **os.environ,
            **request.spec.get("env", {}),
            "KILOWATT_HOME": str(self.settings.home),
            "KILOWATT_STORE_URL": self.settings.store_url,
            "KILOWATT_ARTIFACTS_URL": self.settings.artifacts_url,
            "KILOWATT_JOB_ID": str(job.id),
            "KILOWATT_JOB_ATTEMPT": str(job.attempts),
            "KILOWATT_RUN_ID": run_id,
            "KILOWATT_CHECKPOINT_URL": _checkpoint_url(request, folder),
            # Empty hides every device: a job without accelerators cannot take another's.
            "CUDA_VISIBLE_DEVICES": ",".join(devices),
        }
        env.update({name: threads for name in _THREAD_VARS})
        return env

    # --- running

    def _enforce(self, attempt: _Attempt) -> None:
        now_s = time.monotonic()
        if attempt.stop_reason is None:
            reason = self._stop_reason(attempt, now_s)
            if reason is not None:
                # SIGTERM first: a training job checkpoints and exits with EXIT_PREEMPTED.
                attempt.stop_reason, attempt.kill_at_s = reason, now_s + self.stop_grace_s
                attempt.process.signal_group(signal.SIGTERM)
                _log.info("job %s: %s, stopping", attempt.job.id, reason)
        elif attempt.kill_at_s is not None and now_s >= attempt.kill_at_s:
            attempt.process.signal_group(signal.SIGKILL)
            attempt.kill_at_s = None

    def _stop_reason(self, attempt: _Attempt, now_s: float) -> str | None:
        if self.store.get_job(attempt.job.id).cancel_requested:
            return "cancelled"
        limit_s = attempt.job.max_runtime_s
        if limit_s is not None and now_s - attempt.process.started_s > limit_s:
            return "timed_out"
        return None

    # --- finishing

    def _finish(self, attempt: _Attempt, ended: Exit) -> None:
        job = attempt.job
        self.running.pop(job.id, None)
        self._release(attempt)
        self._account(attempt, ended)
        status, error = self._outcome(attempt, ended)
        final = status != "queued"
        self.store.update_job(
            job.id,
            status=status,
            exit_code=ended.code,
            error=error,
            pid=None,
            finished_at=time.time() if final else None,
        )
        if final:
            self._close_run(self.store.get_job(job.id), status)
        _log.info("job %s attempt %s: exit %s -> %s", job.id, job.attempts, ended.code, status)

    def _outcome(self, attempt: _Attempt, ended: Exit) -> tuple[str, str | None]:
        job = attempt.job
        if attempt.stop_reason == "cancelled":
            return "cancelled", "cancelled by request"
        if attempt.stop_reason == "timed_out":
            return "timed_out", f"stopped after max_runtime_s={job.max_runtime_s}"
        if ended.code == 0:
            return "succeeded", None
        if ended.code == EXIT_PREEMPTED:
            return "queued", "preempted; requeued to resume from its checkpoint"
        error = f"exit code {ended.code}: {_log_tail(attempt.process.log_path)}"
        if job.attempts < job.max_attempts:
            return "queued", error
        return "failed", error

    def _account(self, attempt: _Attempt, ended: Exit) -> None:
        """Add this attempt's time, energy, cost and carbon to the job's totals."""
        accountant = self._accountant(attempt.request)
        instance = str(attempt.request.spec.get("instance", "local-cpu"))
        energy_j = ended.cpu_s * cpu_watts_per_core(self.catalog, instance)
        bill = accountant.account(Measurement(ended.wall_s, energy_j, "estimated-cpu-time"))
        self.store.add_job_usage(
            attempt.job.id,
            time_s=ended.wall_s,
            energy_j=bill.energy_j,
            cost_usd=bill.cost_usd,
            carbon_gco2e=bill.carbon_gco2e,
        )
        self._store_log(attempt)

    def _store_log(self, attempt: _Attempt) -> None:
        job, path = attempt.job, attempt.process.log_path
        run_id = self.store.get_job(job.id).run_id
        if run_id is None or not path.is_file():
            return
        name = f"logs/attempt-{job.attempts}.log"
        try:
            self.store.log_artifact(run_id, path, name)
        except KilowattError as exc:  # a lost log must not lose the job's outcome
            _log.warning("job %s: could not store its log: %s", job.id, exc)
            return
        self.store.update_job(job.id, log_artifact=name)

    def _close_run(self, job: Job, status: str) -> None:
        if job.run_id is None:
            return
        self.store.set_run_usage(
            job.run_id,
            time_s=job.time_s,
            energy_j=job.energy_j,
            cost_usd=job.cost_usd,
            carbon_gco2e=job.carbon_gco2e,
            method="estimated-cpu-time",
        )
        run_status = {"succeeded": "finished", "failed": "failed"}.get(status, "killed")
        with contextlib.suppress(KilowattError):  # the child may have finished it already
            self.store.finish_run(job.run_id, run_status)  # type: ignore[arg-type]

    def _release(self, attempt: _Attempt) -> None:
        self.pool.release(attempt.job.id)

    def _accountant(self, request: JobRequest) -> Accountant:
        spec = request.spec
        return Accountant.from_catalog(
            self.catalog,
            str(spec.get("instance", "local-cpu")),
            str(spec.get("region", "local")),
            price_usd_per_hour=spec.get("price_usd_per_hour"),
        )


def _checkpoint_url(request: JobRequest, folder: Path) -> str:
    checkpoint = request.spec.get("checkpoint") or {}
    return str(checkpoint.get("url") or folder / "checkpoints")


def _for_attempt(request: JobRequest, folder: Path, attempt: int) -> JobRequest:
    """A training job checkpoints into its own folder, and a retry resumes from there."""
    if request.kind != "train":
        return request
    spec = dict(request.spec)
    spec["checkpoint"] = {**spec.get("checkpoint", {}), "url": _checkpoint_url(request, folder)}
    if attempt > 1:
        spec["resume"] = "auto"
    return JobRequest(request.kind, spec, request.workdir)


def _log_tail(path: Path) -> str:
    try:
        with path.open("rb") as log:
            log.seek(max(0, path.stat().st_size - _ERROR_TAIL_BYTES))
            return log.read().decode("utf-8", "replace").strip() or "(no output)"
    except OSError:
        return "(no log)"
