"""Tracking benchmark: kilowatt ``log_metrics`` vs MLflow ``log_metric``, and a 1M-point read.

Both stores are local SQLite files in a temporary folder, measured in the same run:

- per-call logging throughput: kilowatt's ``run.log_metrics({...}, step=i)`` (buffered, one
  point per call) against MLflow's fluent ``mlflow.log_metric(key, value, step=i)`` (one
  synchronous write per call, the baseline). MLflow is bounded to ``--mlflow-calls`` calls and
  its per-call rate extrapolated.
- durable throughput: the same kilowatt loop including the final ``flush()``, so every
  point is committed when the clock stops.
- history read: the time for ``Store.metric_history`` to return a 1,000,000-point metric as
  numpy arrays (target: under 1 s), written in batches of ``--history-batch`` points.

Usage: python bench/tracking.py [--points 200000] [--mlflow-calls 300] [--history 1000000]
                               [--history-batch 1000]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "tracking.json"


def bench_kilowatt_logging(folder: Path, points: int) -> dict[str, float]:
    from kilowatt.store import open_store, start_run

    store = open_store(url=f"sqlite:///{folder / 'kw.db'}", artifacts_url=str(folder / "art"))
    with start_run(project="bench", store=store) as run:
        start = time.perf_counter()
        for step in range(points):
            run.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
        calls_s = time.perf_counter() - start
        run.flush()
        durable_s = time.perf_counter() - start
    stored = store.count_metric_points(run.id, "loss")
    store.close()
    if stored != points:
        raise RuntimeError(f"kilowatt stored {stored} of {points} points")
    return {
        "points": points,
        "call_us": calls_s / points * 1e6,
        "calls_per_s": points / calls_s,
        "durable_points_per_s": points / durable_s,
    }


def bench_mlflow_logging(folder: Path, calls: int) -> dict[str, float] | None:
    try:
        import mlflow
    except ImportError:
        return None
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="mlflow")
    warnings.filterwarnings("ignore", message=".*noload.*")
    mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
    with mlflow.start_run():
        mlflow.log_metric("warmup", 0.0, step=0)  # schema creation is not per-call cost
        start = time.perf_counter()
        for step in range(calls):
            mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
        elapsed_s = time.perf_counter() - start
    return {"calls": calls, "call_us": elapsed_s / calls * 1e6, "calls_per_s": calls / elapsed_s}


def bench_history_read(folder: Path, points: int, batch: int, repeats: int = 3) -> dict[str, float]:
    from kilowatt.store import open_store

    store = open_store(url=f"sqlite:///{folder / 'kw-read.db'}", artifacts_url=str(folder / "a"))
    run = store.create_run("bench-read")
    for first in range(0, points, batch):
        rows = [
            ("loss", s, 1.7e9 + s, 1.0 / (s + 1)) for s in range(first, min(first + batch, points))
        ]
        store.log_metric_points(run.id, "rank0", rows)
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        history = store.metric_history(run.id, "loss")
        timings.append(time.perf_counter() - start)
        if len(history) != points:
            raise RuntimeError(f"read {len(history)} of {points} points")
    store.close()
    return {"points": points, "batch_points": batch, "first_s": timings[0], "best_s": min(timings)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=200_000, help="kilowatt log_metrics calls")
    parser.add_argument("--mlflow-calls", type=int, default=300, help="MLflow log_metric calls")
    parser.add_argument("--history", type=int, default=1_000_000, help="points to read back")
    parser.add_argument(
        "--history-batch",
        type=int,
        default=1_000,
        help="points per flushed batch when writing the history (a 1 s flush of a loop "
        "logging 1,000 points/s); fewer points per batch means more chunks to read",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kw-bench-") as name:
        folder = Path(name)
        os.chdir(folder)  # MLflow writes ./mlruns next to a sqlite backend
        kilowatt = bench_kilowatt_logging(folder, args.points)
        baseline = bench_mlflow_logging(folder, args.mlflow_calls)
        read = bench_history_read(folder, args.history, args.history_batch)
    report(kilowatt, baseline, read)


def _fmt(value: float | None, pattern: str) -> str:
    return "n/a" if value is None else pattern.format(value)


def report(kw: dict[str, float], mlf: dict[str, float] | None, read: dict[str, float]) -> None:
    ratio = kw["calls_per_s"] / mlf["calls_per_s"] if mlf else None
    durable_ratio = kw["durable_points_per_s"] / mlf["calls_per_s"] if mlf else None
    mlf = mlf or {}
    rows = [
        ("log per call: kilowatt log_metrics",
         _fmt(kw["call_us"], "{:.2f} us"), _fmt(kw["calls_per_s"], "{:,.0f}/s")),
        ("log per call: MLflow log_metric (sqlite)",
         _fmt(mlf.get("call_us"), "{:.0f} us"), _fmt(mlf.get("calls_per_s"), "{:,.0f}/s")),
        ("throughput ratio kilowatt/MLflow (target >= 100x)", _fmt(ratio, "{:,.0f}x"), ""),
        ("durable (incl. final flush) kilowatt", "", _fmt(kw["durable_points_per_s"], "{:,.0f}/s")),
        ("durable ratio kilowatt/MLflow", _fmt(durable_ratio, "{:,.0f}x"), ""),
        (f"read {read['points']:,}-point history, {read['batch_points']:,}-point batches (< 1 s)",
         _fmt(read["best_s"], "{:.3f} s best"), _fmt(read["first_s"], "{:.3f} s first")),
    ]  # fmt: skip
    width = max(len(row[0]) for row in rows)
    print(f"{'measure':<{width}}  {'value':>16}  {'rate / other':>16}")
    for name, value, rate in rows:
        print(f"{name:<{width}}  {value:>16}  {rate:>16}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "benchmark": "tracking",
        "when_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "kilowatt": kw,
        "mlflow": mlf or None,
        "ratio_calls": ratio,
        "ratio_durable": durable_ratio,
        "history_read": read,
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
