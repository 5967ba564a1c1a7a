"""The Ray backend: Ray Train for training, Ray Serve for serving, Ray Jobs for batch jobs.

The cluster is ``address`` (or ``RAY_ADDRESS``); without either a local Ray is started on
demand. Ray workers track and meter through the same store and artifact URLs as the
driver, so those must be reachable from every node: a SQLite store on a cluster of
several nodes is refused with ``BackendError`` (use PostgreSQL via ``KILOWATT_STORE_URL``).

    >>> backend = RayBackend(address="ray://head:10001")  # doctest: +SKIP
    >>> result = backend.train(spec, callbacks=[StoreRecorder(run.id)])  # doctest: +SKIP
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from kilowatt.backends.job import JOB_ENV, JobRequest, encode_job
from kilowatt.errors import BackendError
from kilowatt.signals import handling_signals
from kilowatt.spec import ServeSpec, Settings, TrainSpec

if TYPE_CHECKING:
    from kilowatt.backends.ray_serve import RayDeployment
    from kilowatt.meter import Accountant
    from kilowatt.train import Callback, FitResult

__all__ = ["RayBackend", "check_store_for_cluster", "submit_when_ready"]

_DASHBOARD = "http://127.0.0.1:8265"
# What the Jobs API answers while the head node's job agent is still starting.
_AGENT_STARTING = "No available agent to submit job"
_AGENT_WAIT_S = 60.0


def submit_when_ready(client: Any, name: str, **job: Any) -> str:
    """``client.submit_job(**job)``, retried with backoff for up to a minute while the
    cluster's job agent is starting (a cluster just started answers "try again later").

    Raises:
        BackendError: the Jobs API refused the job, or no agent came up in time.
    """
    wait_s, deadline = 0.5, time.monotonic() + _AGENT_WAIT_S
    while True:
        try:
            return str(client.submit_job(**job))
        except RuntimeError as exc:
            if _AGENT_STARTING not in str(exc) or time.monotonic() + wait_s > deadline:
                raise BackendError(f"the Ray Jobs API refused job {name!r}: {exc}") from None
        time.sleep(wait_s)
        wait_s = min(wait_s * 2, 8.0)


def check_store_for_cluster(store_url: str, node_count: int) -> None:
    """Refuse a SQLite store when work runs on several nodes (each would see its own file).

    Raises:
        BackendError: naming the URL and the fix.
    """
    if node_count > 1 and store_url.startswith("sqlite"):
        raise BackendError(
            f"the store is SQLite ({store_url}) but the Ray cluster has {node_count} nodes; "
            "workers on other nodes cannot write to it. Use PostgreSQL: set "
            "KILOWATT_STORE_URL=postgresql+psycopg://user@host/db (and KILOWATT_ARTIFACTS_URL "
            "to shared storage such as s3://bucket/prefix)"
        )


class RayBackend:
    """Runs workloads on a Ray cluster.

    Args:
        settings: the store and artifact URLs passed to Ray workers.
        address: the cluster; default ``RAY_ADDRESS``, else a local Ray started on demand.
        dashboard_url: the Ray Jobs API address for ``submit`` (default: ``RAY_ADDRESS``
            when it is an http URL, else the local dashboard).
    """

    name = "ray"

    def __init__(
        self,
        settings: Settings | None = None,
        address: str | None = None,
        dashboard_url: str | None = None,
    ) -> None:
        self.settings = settings or Settings.from_env()
        self.address = address or os.environ.get("RAY_ADDRESS")
        self.dashboard_url = dashboard_url

    def connect(self) -> int:
        """Connect to the cluster (once) and return its number of alive nodes."""
        try:
            import ray
        except ImportError:
            raise BackendError(
                "the ray backend needs Ray; install it with pip install 'kilowatt[ray]'"
            ) from None
        if not ray.is_initialized():
            if self.address and self.address.startswith("http"):
                raise BackendError(
                    f"address {self.address} is a Jobs API URL; train and serve need the "
                    "cluster address (ray://host:10001 or host:6379)"
                )
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
        return sum(1 for node in ray.nodes() if node.get("Alive"))

    def train(
        self,
        spec: TrainSpec,
        *,
        callbacks: Sequence[Callback] = (),
        accountant: Accountant | None = None,
        workdir: str | None = None,
        **overrides: Any,
    ) -> FitResult:
        """Train ``spec`` with Ray Train (``spec.workers`` Ray workers).

        Raises:
            BackendError: tracking into SQLite across nodes, or training failed.
        """
        from kilowatt.backends.ray_train import run_torch_trainer

        nodes = self.connect()
        if callbacks:
            check_store_for_cluster(self.settings.store_url, nodes)
        return run_torch_trainer(
            spec,
            self.settings,
            workdir=workdir or os.getcwd(),
            callbacks=callbacks,
            accountant=accountant,
            overrides=overrides,
        )

    def deploy(self, spec: ServeSpec, *, workdir: str | None = None) -> RayDeployment:
        """Start ``spec`` as a Ray Serve application and return at once."""
        from kilowatt.backends.ray_serve import deploy

        self.connect()
        return deploy(spec, workdir=workdir or os.getcwd())

    def serve(self, spec: ServeSpec, *, admin: bool = False) -> None:
        """Serve ``spec`` on Ray Serve until Ctrl-C or SIGTERM, then delete it."""
        if admin:
            raise BackendError(
                "model repository routes (--admin) change one process's models; on Ray, "
                "redeploy the spec instead"
            )
        import signal
        import threading

        deployment = self.deploy(spec)
        print(f"serving on Ray Serve at {deployment.url}", file=sys.stderr, flush=True)
        stopped = threading.Event()
        try:
            with handling_signals(lambda *_: stopped.set(), [signal.SIGTERM]):
                while not stopped.wait(1.0):
                    pass
        except KeyboardInterrupt:
            pass
        finally:
            deployment.stop()

    def submit(self, job: JobRequest) -> str:
        """Send ``job`` to the Ray Jobs API; returns the submission id.

        A train or serve job runs ``python -m kilowatt.backends.child`` on the cluster
        (a ``backend: ray`` training spec then fans out with Ray Train from there); a
        command job runs its command. Store and artifact URLs go with it.

        Raises:
            BackendError: the store is SQLite, or the Jobs API refused the job.
        """
        import ray
        from ray.job_submission import JobSubmissionClient

        # Without a connection the cluster's size is unknown: assume it has several nodes.
        nodes = sum(1 for n in ray.nodes() if n.get("Alive")) if ray.is_initialized() else 2
        check_store_for_cluster(self.settings.store_url, nodes)
        env = {
            "KILOWATT_STORE_URL": self.settings.store_url,
            "KILOWATT_ARTIFACTS_URL": self.settings.artifacts_url,
            "KILOWATT_USER": self.settings.user,
        }
        if job.kind == "command":
            entrypoint = shlex.join(job.spec["command"])
            env.update(job.spec.get("env", {}))
        else:
            entrypoint = f"{self._python()} -m kilowatt.backends.child --from-env"
            env[JOB_ENV] = encode_job(job, run_id=None, prices=None)
        client = JobSubmissionClient(self._dashboard())
        return submit_when_ready(
            client,
            job.name,
            entrypoint=entrypoint,
            runtime_env={"working_dir": job.workdir, "env_vars": env},
            metadata={"kilowatt_job": job.name, "kind": job.kind},
        )

    def _python(self) -> str:
        # A cluster on this machine runs this interpreter (and its kilowatt); a remote one
        # runs the ``python`` of its own image.
        host = self._dashboard().split("://", 1)[-1].split(":", 1)[0]
        return shlex.quote(sys.executable) if host in ("127.0.0.1", "localhost") else "python"

    def _dashboard(self) -> str:
        if self.dashboard_url:
            return self.dashboard_url
        if self.address and self.address.startswith("http"):
            return self.address
        return _DASHBOARD
