"""``kilowatt submit``, ``kilowatt worker``, ``kilowatt jobs list|logs|cancel`` and
``kilowatt export k8s``.

    kilowatt submit train.yaml --priority 5     # queue (or send to Ray with backend: ray)
    kilowatt worker --max-parallel 2            # run queued jobs on this machine
    kilowatt jobs list
    kilowatt jobs logs 3
    kilowatt jobs cancel 3
    kilowatt export k8s train.yaml --image registry.example/kilowatt:0.1 > job.yaml
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from kilowatt.errors import SpecError

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    _register_submit(app)
    _register_worker(app)
    jobs = typer.Typer(name="jobs", help="Queued jobs: list, logs, cancel.", no_args_is_help=True)
    _register_jobs(jobs)
    app.add_typer(jobs, name="jobs")
    _register_export(_export_group(app))


def _export_group(app: typer.Typer) -> typer.Typer:
    # Other concepts may add ``kilowatt export <x>`` too: share one group.
    for group in app.registered_groups:
        if group.name == "export" and group.typer_instance is not None:
            return group.typer_instance
    export = typer.Typer(name="export", help="Export a spec for other platforms.")
    app.add_typer(export, name="export")
    return export


def _register_submit(app: typer.Typer) -> None:
    @app.command(no_args_is_help=True)
    def submit(
        spec_path: Path = typer.Argument(..., metavar="SPEC.yaml", help="Train, serve or command."),
        backend: str | None = typer.Option(None, help="local or ray (default: the spec's)."),
        address: str | None = typer.Option(None, help="Ray address (default: RAY_ADDRESS)."),
        priority: int | None = typer.Option(None, help="Queue priority (higher runs first)."),
    ) -> None:
        """Queue a job: in the local queue (run by `kilowatt worker`) or on Ray Jobs."""
        from kilowatt.backends import JobRequest, get_backend, read_job_file

        job = read_job_file(spec_path, workdir=str(Path.cwd()))
        if priority is not None:
            backend_section = {**job.spec.get("backend", {}), "priority": priority}
            job = JobRequest(job.kind, {**job.spec, "backend": backend_section}, job.workdir)
        kind = backend or job.backend.kind
        target = get_backend(kind, address=address or job.backend.address)
        job_id = target.submit(job)
        typer.echo(f"submitted {job.kind} job {job.name!r} as {job_id} ({kind})")


def _register_worker(app: typer.Typer) -> None:
    @app.command()
    def worker(
        devices: str | None = typer.Option(
            None, help="Accelerator ids to assign, e.g. 0,1 (default: detected; '' for none)."
        ),
        max_parallel: int = typer.Option(1, min=1, help="Jobs running at once."),
        cpu_threads: int | None = typer.Option(None, min=1, help="CPU threads per job."),
        until_idle: bool = typer.Option(False, help="Exit once nothing is queued or running."),
        poll_interval_s: float = typer.Option(0.5, min=0.01, help="Seconds between checks."),
        stop_grace_s: float = typer.Option(10.0, min=0.0, help="SIGTERM to SIGKILL, seconds."),
    ) -> None:
        """Run queued jobs on this machine by priority, until SIGTERM or Ctrl-C."""
        from kilowatt.backends.worker import LocalWorker
        from kilowatt.catalog import load_catalog
        from kilowatt.spec import Settings
        from kilowatt.store import open_store

        settings = Settings.from_env()
        device_list = None if devices is None else [d for d in devices.split(",") if d.strip()]
        with open_store(settings) as store:
            runner = LocalWorker(
                store,
                settings,
                devices=device_list,
                max_parallel=max_parallel,
                cpu_threads=cpu_threads,
                catalog=load_catalog(user_dir=settings.catalog_dir),
                poll_interval_s=poll_interval_s,
                stop_grace_s=stop_grace_s,
            )
            typer.echo(
                f"worker {runner.worker_id}: {max_parallel} slot(s), devices "
                f"{runner.pool.free or 'none'}",
                err=True,
            )
            runner.run(until_idle=until_idle)


def _open_store() -> Any:
    from kilowatt.store import open_store

    return open_store()


def _register_jobs(jobs: typer.Typer) -> None:
    @jobs.command("list")
    def list_jobs(
        status: str | None = typer.Option(None, help="Only jobs with this status."),
        limit: int = typer.Option(50, min=1, help="Most jobs to show."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """Jobs, newest first, with their usage summed over attempts."""
        with _open_store() as store:
            found = store.list_jobs(status=status, limit=limit)
        if as_json:
            typer.echo(json.dumps([_job_dict(job) for job in found], indent=2))
            return
        table = Table(title="jobs")
        for column in ("id", "name", "status", "prio", "attempts", "devices", "time", "energy",
                       "cost", "carbon"):  # fmt: skip
            table.add_column(column)
        for job in found:
            table.add_row(
                str(job.id),
                job.name,
                job.status,
                str(job.priority),
                f"{job.attempts}/{job.max_attempts}",
                ",".join(job.devices or []) or "-",
                f"{job.time_s:.1f} s",
                f"{job.energy_j:.1f} J",
                f"${job.cost_usd:.6f}",
                f"{job.carbon_gco2e:.4f} g",
            )
        Console().print(table)

    @jobs.command("logs")
    def logs(
        job_id: int = typer.Argument(..., help="The job id."),
        attempt: int | None = typer.Option(None, help="One attempt (default: every attempt)."),
    ) -> None:
        """Print a job's output: stored logs of finished attempts, the live file otherwise."""
        from kilowatt.spec import Settings

        with _open_store() as store:
            job = store.get_job(job_id)
            attempts = [attempt] if attempt is not None else list(range(1, job.attempts + 1))
            if not attempts:
                typer.echo(f"job {job_id} has not started yet (status {job.status})", err=True)
            for number in attempts:
                typer.echo(_attempt_log(store, job, number, Settings.from_env()), nl=False)

    @jobs.command("cancel")
    def cancel(job_id: int = typer.Argument(..., help="The job id.")) -> None:
        """Cancel a queued job now, or ask its worker to stop a running one."""
        with _open_store() as store:
            job = store.request_cancel(job_id)
        if job.status == "running":
            typer.echo(f"job {job_id}: cancel requested; its worker stops it")
        else:
            typer.echo(f"job {job_id}: {job.status}")


def _attempt_log(store: Any, job: Any, number: int, settings: Any) -> str:
    from kilowatt.backends.worker import job_folder
    from kilowatt.errors import NotFound

    if job.run_id is not None:
        try:
            with store.open_artifact(job.run_id, f"logs/attempt-{number}.log") as stored:
                return stored.read().decode("utf-8", "replace")
        except NotFound:
            pass  # still running (or lost): read the worker's file
    local = job_folder(settings, job.id) / f"attempt-{number}.log"
    if local.is_file():
        return local.read_text(errors="replace")
    raise SpecError(
        f"job {job.id} has no log for attempt {number}; it has had {job.attempts} attempt(s)"
    )


def _job_dict(job: Any) -> dict[str, Any]:
    keys = ("id", "name", "status", "priority", "attempts", "max_attempts", "max_runtime_s",
            "devices", "run_id", "exit_code", "error", "time_s", "energy_j", "cost_usd",
            "carbon_gco2e", "submitted_at", "started_at", "finished_at")  # fmt: skip
    values = {key: getattr(job, key) for key in keys}
    values["age_s"] = time.time() - job.submitted_at
    return values


def _register_export(export: typer.Typer) -> None:
    @export.command("k8s", no_args_is_help=True)
    def k8s(
        spec_path: Path = typer.Argument(..., metavar="SPEC.yaml", help="A train or serve spec."),
        image: str = typer.Option("kilowatt:latest", help="Container image with kilowatt."),
        namespace: str | None = typer.Option(None, help="Kubernetes namespace."),
        output: Path | None = typer.Option(None, "-o", "--output", help="Write here."),
    ) -> None:
        """Kubernetes manifests: a Job for training, Deployment + Service + HPA for serving."""
        from kilowatt.backends import read_job_file
        from kilowatt.backends.k8s import manifests_for, to_yaml

        job = read_job_file(spec_path)
        text = to_yaml(manifests_for(job, image=image, namespace=namespace, spec_file=spec_path))
        if output is None:
            typer.echo(text, nl=False)
        else:
            output.write_text(text)
            typer.echo(f"wrote {output}", err=True)
