"""The local backend: training and serving in processes on this machine, and the job queue.

``train`` runs kilowatt's trainer here (``workers > 1`` spawns torch.distributed workers);
``serve`` runs the HTTP server here; ``submit`` queues a job in the store for
``kilowatt worker`` (``kilowatt.backends.worker.LocalWorker``) to run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from kilowatt.backends.job import JobRequest
from kilowatt.spec import ServeSpec, Settings, TrainSpec

if TYPE_CHECKING:
    from kilowatt.meter import Accountant
    from kilowatt.train import Callback, FitResult

__all__ = ["LocalBackend"]


class LocalBackend:
    """Runs workloads on this machine.

    Args:
        settings: where the store (holding the queue) is.
    """

    name = "local"

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env()

    def train(
        self,
        spec: TrainSpec,
        *,
        callbacks: Sequence[Callback] = (),
        accountant: Accountant | None = None,
        **overrides: Any,
    ) -> FitResult:
        """Train ``spec`` in this process (and its spawned workers)."""
        from kilowatt.train.entry import build_trainer

        trainer = build_trainer(spec, callbacks=callbacks, accountant=accountant, **overrides)
        return trainer.fit()

    def serve(self, spec: ServeSpec, *, admin: bool = False) -> None:
        """Serve ``spec`` here until SIGTERM or Ctrl-C."""
        from kilowatt.serve.runner import run

        run(spec, admin=admin)

    def submit(self, job: JobRequest) -> str:
        """Queue ``job`` for ``kilowatt worker``; returns the job id."""
        from kilowatt.store import open_store

        options = job.backend
        with open_store(self.settings) as store:
            queued = store.submit_job(
                job.to_dict(),
                name=job.name,
                priority=options.priority,
                max_attempts=options.max_attempts,
                max_runtime_s=options.max_runtime_s,
                flexible=options.flexible,
                not_before=options.not_before.timestamp() if options.not_before else None,
                deadline=options.deadline.timestamp() if options.deadline else None,
            )
        return str(queued.id)
