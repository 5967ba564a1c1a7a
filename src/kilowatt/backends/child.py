"""The process a queued training or serving job runs in: ``python -m kilowatt.backends.child
JOB.json`` (or ``--from-env``, reading ``KILOWATT_JOB``, as a Ray job does).

The worker writes ``JOB.json`` (the job request, its run id and the accountant's prices)
and reads the outcome from the exit code: 0 done, 75 (``EXIT_PREEMPTED``) checkpointed
after SIGTERM, anything else failed. Events go to the job's run through the store-backed
recorder, so metrics of every attempt land in one run.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kilowatt.backends.job import JOB_ENV, JobRequest, decode_job

__all__ = ["main"]


def _train(job: JobRequest, run_id: str | None, prices: dict[str, Any] | None) -> int:
    from kilowatt.backends.recorder import StoreRecorder
    from kilowatt.meter import Accountant
    from kilowatt.spec import TrainSpec
    from kilowatt.train import EXIT_PREEMPTED
    from kilowatt.train.entry import build_trainer

    spec = TrainSpec.model_validate(job.spec)
    callbacks = [StoreRecorder(run_id)] if run_id else []
    accountant = Accountant(**prices) if prices else None
    if spec.backend.kind == "ray":  # e.g. a Ray job: fan out over the cluster from here
        from kilowatt.backends.ray import RayBackend

        backend = RayBackend(address=spec.backend.address)
        result = backend.train(
            spec, callbacks=callbacks, accountant=accountant, workdir=job.workdir
        )
    else:
        trainer = build_trainer(spec, callbacks=callbacks, accountant=accountant, progress=False)
        result = trainer.fit()
    print(
        f"kilowatt: trained steps {result.start_step}..{result.steps} in "
        f"{result.duration_s:.2f} s, final loss {result.final_loss}",
        flush=True,
    )
    return EXIT_PREEMPTED if result.preempted else 0


def _serve(job: JobRequest) -> int:
    from kilowatt.serve.runner import run
    from kilowatt.spec import ServeSpec

    run(ServeSpec.model_validate(job.spec))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the job described by ``argv[0]`` and return the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m kilowatt.backends.child JOB.json | --from-env", file=sys.stderr)
        return 2
    if args[0] == "--from-env":  # a Ray job carries its request in the environment
        job, run_id, prices = decode_job(os.environ[JOB_ENV])
    else:
        job, run_id, prices = decode_job(Path(args[0]).read_text())
    if job.workdir not in sys.path:
        sys.path.insert(0, job.workdir)  # the user's entry points live next to the spec
    try:
        if job.kind == "train":
            return _train(job, run_id, prices)
        if job.kind == "serve":
            return _serve(job)
        print(f"kilowatt: job kind {job.kind!r} does not run in a child", file=sys.stderr)
        return 2
    except Exception:  # the log is the user's only view of the failure: print it all
        traceback.print_exc()
        sys.stderr.flush()
        return 1


if __name__ == "__main__":
    sys.exit(main())
