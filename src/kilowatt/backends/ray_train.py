"""Training on Ray: a Ray Train ``TorchTrainer`` whose workers each run kilowatt's Trainer.

Ray Train starts the workers and their torch.distributed process group; inside it,
``Trainer.fit()`` joins that group instead of spawning its own. Checkpoints are kilowatt's
own, written to shared storage, so when a worker dies and Ray Train restarts the group
(``max_failures``), every worker resumes from the newest verified checkpoint
(``resume: auto``) and the run ends with the weights an uninterrupted run would have.

Rank 0's ``FitResult`` comes back through the same storage (Ray Train keeps only metrics
attached to its own checkpoints).
"""

from __future__ import annotations

import os
import pickle
import sys
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import fsspec

from kilowatt.errors import BackendError
from kilowatt.spec import Settings, TrainSpec

if TYPE_CHECKING:
    from kilowatt.meter import Accountant
    from kilowatt.train import Callback, FitResult

__all__ = ["checkpoint_url_for", "run_torch_trainer", "train_worker"]


def checkpoint_url_for(spec: TrainSpec, settings: Settings) -> str:
    """Where the workers checkpoint: the spec's URL, else ``ray.storage_url/<name>``, else
    ``<KILOWATT_HOME>/checkpoints/<name>`` (shared only when every node sees that folder)."""
    if spec.checkpoint.url:
        return spec.checkpoint.url
    storage = spec.backend.ray.storage_url
    if storage:
        return f"{storage.rstrip('/')}/{spec.name}"
    return str(settings.home / "checkpoints" / spec.name)


def train_worker(config: dict[str, Any]) -> None:
    """The per-worker function Ray Train runs: build kilowatt's Trainer and fit.

    ``config`` holds plain values only (spec, settings, callbacks, prices), so it ships to
    any node.
    """
    import torch.distributed as dist

    from kilowatt.meter import Accountant
    from kilowatt.train.entry import build_trainer

    workdir = config["workdir"]
    if workdir not in sys.path:
        sys.path.insert(0, workdir)  # the user's entry points live next to the spec
    os.environ.update(config["env"])  # store, artifacts and home for the recorder
    spec = TrainSpec.model_validate(config["spec"])
    accountant = Accountant(**config["prices"]) if config["prices"] else None
    trainer = build_trainer(
        spec,
        callbacks=config["callbacks"],
        accountant=accountant,
        **config["overrides"],
    )
    result = trainer.fit()
    if not dist.is_initialized() or dist.get_rank() == 0:
        fs, path = fsspec.core.url_to_fs(config["result_url"])
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with fs.open(path, "wb") as sink:
            pickle.dump(result, sink)


def run_torch_trainer(
    spec: TrainSpec,
    settings: Settings,
    *,
    workdir: str,
    callbacks: Sequence[Callback] = (),
    accountant: Accountant | None = None,
    overrides: dict[str, Any] | None = None,
) -> FitResult:
    """Run ``spec`` with a ``TorchTrainer`` on the connected Ray cluster.

    Raises:
        BackendError: training failed after ``max_failures`` restarts.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    options = spec.backend.ray
    workers = int((overrides or {}).get("workers", spec.workers))
    checkpoint_url = checkpoint_url_for(spec, settings)
    checkpoint = {**spec.checkpoint.model_dump(), "url": checkpoint_url}
    run_name = f"{spec.name}-{uuid.uuid4().hex[:8]}"
    storage = str(settings.home / "ray")
    config = {
        "spec": spec.model_dump(mode="json"),
        "workdir": workdir,
        "env": {
            "KILOWATT_HOME": str(settings.home),
            "KILOWATT_STORE_URL": settings.store_url,
            "KILOWATT_ARTIFACTS_URL": settings.artifacts_url,
            "KILOWATT_USER": settings.user,
            # the witness only; the audit key never travels in a Ray config (every node
            # reads its own KILOWATT_AUDIT_KEY or key file)
            "KILOWATT_AUDIT_WITNESS_URL": settings.audit_witness_url or "",
            "KILOWATT_AUDIT_WITNESS_EVERY": str(settings.audit_witness_every),
        },
        "callbacks": list(callbacks),
        "prices": dict(accountant.__dict__) if accountant is not None else None,
        # Ray Train owns the workers: one kilowatt rank per Ray worker, no local spawning.
        "overrides": {
            **(overrides or {}),
            "workers": 1,
            "progress": False,
            "checkpoint": checkpoint,
            "resume": (overrides or {}).get("resume", spec.resume),
        },
        "result_url": f"{checkpoint_url.rstrip('/')}/.ray-result-{run_name}.pkl",
    }
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers,
            use_gpu=options.gpus_per_worker > 0,
            resources_per_worker=_resources(options.cpus_per_worker, options.gpus_per_worker),
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=options.max_failures),
        ),
    )
    try:
        outcome = trainer.fit()
        error = getattr(outcome, "error", None)
    except Exception as exc:  # Ray wraps the worker's exception; keep its message
        error = exc
    if error is not None:
        raise BackendError(
            f"Ray training of {spec.name!r} failed after {options.max_failures} restart(s): "
            f"{error}; raise backend.ray.max_failures to tolerate more worker failures"
        ) from error
    return _read_result(config["result_url"])


def _resources(cpus: float, gpus: float) -> dict[str, float]:
    resources = {"CPU": cpus}
    if gpus > 0:
        resources["GPU"] = gpus
    return resources


def _read_result(url: str) -> FitResult:
    fs, path = fsspec.core.url_to_fs(url)
    try:
        with fs.open(path, "rb") as source:
            result: FitResult = pickle.load(source)
    except FileNotFoundError:
        raise BackendError(
            f"Ray training finished but rank 0 left no result at {url}; check that the "
            "checkpoint location is shared storage every node can write"
        ) from None
    fs.rm(path)
    return result
