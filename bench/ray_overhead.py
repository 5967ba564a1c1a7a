"""Ray overhead: the same training job run locally and on a local Ray cluster.

The job is ``examples/train/tiny.yaml``'s model and data with two data-parallel workers:

- local: ``kilowatt.Trainer`` spawning two torch.distributed (gloo) worker processes;
- ray: the ``ray`` backend, a Ray Train ``TorchTrainer`` with two workers each running
  kilowatt's Trainer, on a cluster started in this run (``ray.init(num_cpus=2)``).

Reported per backend: start-up seconds (from the call to the first training step:
process or actor start, process group, model build), training steps/s (the loop alone),
and the wall time of the whole call; Ray's cluster start is reported on its own line.
Ratios are ray / local. Checkpointing is at the end only, metering off, in both.

Usage: python bench/ray_overhead.py [--steps 400] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "ray_overhead.json"
sys.path.insert(0, str(ROOT))


def _spec(steps: int, batch_size: int, checkpoint_url: str) -> Any:
    from kilowatt.spec import TrainSpec

    return TrainSpec.model_validate(
        {
            "name": "ray-overhead",
            "model": "examples.train.tiny:make_model",
            "optimizer": "examples.train.tiny:make_optimizer",
            "dataset": "examples.train.tiny:make_dataset",
            "loss": "examples.train.tiny:loss_fn",
            "steps": steps,
            "batch_size": batch_size,
            "workers": 2,
            "device": "cpu",
            "progress": False,
            "log_every": steps,
            "resume": "never",
            "checkpoint": {"url": checkpoint_url, "every": str(steps), "asynchronous": False},
            "backend": {"kind": "ray", "ray": {"cpus_per_worker": 1}},
        }
    )


def _figures(wall_s: float, result: Any) -> dict[str, float]:
    steps = result.steps - result.start_step
    return {
        "wall_s": wall_s,
        "startup_s": wall_s - result.duration_s,
        "train_s": result.duration_s,
        "steps_per_s": steps / result.duration_s,
    }


def run_local(steps: int, batch_size: int, scratch: Path) -> dict[str, float]:
    from kilowatt.backends import LocalBackend

    spec = _spec(steps, batch_size, str(scratch / "local"))
    started_s = time.perf_counter()
    result = LocalBackend().train(spec, meter=None)
    return _figures(time.perf_counter() - started_s, result)


def run_ray(steps: int, batch_size: int, scratch: Path) -> tuple[dict[str, float], float]:
    import ray

    from kilowatt.backends.ray import RayBackend

    started_s = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    cluster_s = time.perf_counter() - started_s
    try:
        spec = _spec(steps, batch_size, str(scratch / "ray"))
        started_s = time.perf_counter()
        result = RayBackend().train(spec, workdir=str(ROOT), meter=None)
        return _figures(time.perf_counter() - started_s, result), cluster_s
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    warnings.simplefilter("ignore", DeprecationWarning)  # Ray's own, not ours
    with tempfile.TemporaryDirectory(prefix="kilowatt-ray-bench-") as scratch:
        os.environ.setdefault("KILOWATT_HOME", str(Path(scratch) / "home"))
        local = run_local(args.steps, args.batch_size, Path(scratch))
        ray_figures, cluster_s = run_ray(args.steps, args.batch_size, Path(scratch))
    rows = [
        ("start-up (s)", "startup_s"),
        ("training steps/s", "steps_per_s"),
        ("whole call (s)", "wall_s"),
    ]
    print(f"{'figure':<22}{'local':>12}{'ray':>12}{'ray/local':>12}")
    for label, key in rows:
        ratio = ray_figures[key] / local[key]
        print(f"{label:<22}{local[key]:>12.3f}{ray_figures[key]:>12.3f}{ratio:>12.2f}")
    print(f"{'ray cluster start (s)':<22}{'-':>12}{cluster_s:>12.3f}{'-':>12}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "benchmark": "ray_overhead",
                "steps": args.steps,
                "batch_size": args.batch_size,
                "workers": 2,
                "local": local,
                "ray": ray_figures,
                "ray_cluster_start_s": cluster_s,
                "ratios": {key: ray_figures[key] / local[key] for _, key in rows},
                "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
            indent=2,
        )
    )
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
