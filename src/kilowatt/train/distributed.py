"""Starting data-parallel workers on this machine with torch.distributed.

``spawn_workers`` starts ``workers`` processes, each joining a process group (gloo on CPU,
NCCL on GPU) and running ``Trainer.fit_rank``; rank 0's result comes back to the caller.
The rendezvous store is served by the parent on a port it binds itself (port 0, then read
back), so no free port is guessed; the workers join it as clients.
A SIGTERM/SIGINT to the parent is passed on to the workers, which agree on a step,
checkpoint and stop together.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from kilowatt.errors import BackendError
from kilowatt.signals import handling_signals

if TYPE_CHECKING:
    from kilowatt.train.callbacks import FitResult
    from kilowatt.train.trainer import Trainer

__all__ = ["rendezvous_store", "spawn_workers", "worker_main"]

RENDEZVOUS_HOST = "127.0.0.1"


def rendezvous_store() -> dist.TCPStore:
    """The workers' rendezvous store, served from this process on a port it binds itself
    (``.port`` gives it); it must outlive the workers."""
    return dist.TCPStore(RENDEZVOUS_HOST, 0, is_master=True, wait_for_workers=False)


def backend_for(device: str) -> str:
    """NCCL when training on CUDA, gloo otherwise."""
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    return "nccl" if cuda else "gloo"


def worker_main(rank: int, world_size: int, port: int, trainer: Trainer, result_path: str) -> None:
    """One worker: join the group through the store at 127.0.0.1:``port``, train, write
    rank 0's result."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    store = dist.TCPStore(RENDEZVOUS_HOST, port, is_master=False)
    backend = backend_for(trainer.options.device)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size)
    try:
        result = trainer.fit_rank()
        if rank == 0:
            Path(result_path).write_bytes(pickle.dumps(result))
    finally:
        dist.destroy_process_group()


def spawn_workers(trainer: Trainer) -> FitResult:
    """Run ``trainer`` in ``options.workers`` local processes; return rank 0's result.

    Raises:
        BackendError: a worker failed (its traceback is in the message).
    """
    world_size = trainer.options.workers
    store = rendezvous_store()  # held until the workers are done
    with tempfile.TemporaryDirectory(prefix="kilowatt-workers-") as scratch:
        result_path = str(Path(scratch) / "result.pkl")
        args = (world_size, store.port, trainer, result_path)
        try:
            context = mp.start_processes(
                worker_main, args=args, nprocs=world_size, join=False, start_method="spawn"
            )
        except (pickle.PicklingError, AttributeError, TypeError) as exc:
            raise BackendError(
                f"cannot send the trainer to worker processes ({exc}); with workers > 1 pass "
                "module-level functions and picklable objects, not lambdas or closures"
            ) from None
        with handling_signals(_forwarding_to(context.processes)):
            try:
                while not context.join():
                    pass
            except mp.ProcessRaisedException as exc:
                raise BackendError(f"a training worker failed:\n{exc}") from None
            except mp.ProcessExitedException as exc:
                raise BackendError(f"a training worker died: {exc}") from None
        return pickle.loads(Path(result_path).read_bytes())


def _forwarding_to(processes: list[Any]) -> Callable[[int, Any], None]:
    """A handler that passes SIGTERM/SIGINT on to the workers so they checkpoint together."""

    def forward(signum: int, frame: Any) -> None:
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signum)

    return forward
