"""Tracking benchmark: kilowatt ``log_metrics`` vs MLflow three ways, and a 1M-point read.

Both stores are local SQLite files in a temporary folder, measured in the same run, and each
row says what a crash loses, because speed and durability trade against each other:

- buffered, one point per call: kilowatt's ``run.log_metrics({...}, step=i)`` (a flush
  thread commits every second) against MLflow's ``log_metric(..., synchronous=False)``
  (queued; MLflow's thread writes batches). Like with like: the >= 100x target applies here.
- committed, one point per call: kilowatt with ``flush()`` after each call against MLflow's
  synchronous ``log_metric`` (bounded to ``--mlflow-calls`` calls, rate extrapolated).
- committed in bulk: kilowatt's buffered loop including its final ``flush()`` against
  ``MlflowClient.log_batch`` with ``--mlflow-batch`` points per call.
- history read: the time for ``Store.metric_history`` to return a 1,000,000-point metric as
  numpy arrays (target: under 1 s), written in batches of ``--history-batch`` points.

Usage: python bench/tracking.py [--points 200000] [--flushed-calls 300] [--mlflow-calls 300]
       [--mlflow-async-calls 20000] [--mlflow-batch 1000] [--mlflow-batches 20]
       [--history 1000000] [--history-batch 1000]
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


def bench_kilowatt_logging(folder: Path, points: int, durable_calls: int) -> dict[str, float]:
    from kilowatt.store import open_store, start_run

    store = open_store(url=f"sqlite:///{folder / 'kw.db'}", artifacts_url=str(folder / "art"))
    with start_run(project="bench", store=store) as run:
        start = time.perf_counter()
        for step in range(points):
            run.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
        calls_s = time.perf_counter() - start
        run.flush()
        durable_s = time.perf_counter() - start
        # The same call made durable each time: commit before returning, like a per-call API.
        start = time.perf_counter()
        for step in range(durable_calls):
            run.log_metrics({"committed": 1.0 / (step + 1)}, step=step)
            run.flush()
        flushed_s = time.perf_counter() - start
    stored = store.count_metric_points(run.id, "loss")
    committed = store.count_metric_points(run.id, "committed")
    store.close()
    if (stored, committed) != (points, durable_calls):
        raise RuntimeError(f"kilowatt stored {stored} of {points}, {committed} of {durable_calls}")
    return {
        "points": points,
        "call_us": calls_s / points * 1e6,
        "calls_per_s": points / calls_s,
        "durable_points_per_s": points / durable_s,
        "flushed_calls": durable_calls,
        "flushed_call_us": flushed_s / durable_calls * 1e6,
        "flushed_calls_per_s": durable_calls / flushed_s,
    }


def _quiet_mlflow(folder: Path) -> Any:
    import mlflow

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="mlflow")
    warnings.filterwarnings("ignore", message=".*noload.*")
    mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
    return mlflow


def _check_mlflow(mlflow: Any, run_id: str, key: str, expected: int) -> None:
    stored = len(mlflow.MlflowClient().get_metric_history(run_id, key))
    if stored != expected:
        raise RuntimeError(f"MLflow stored {stored} of {expected} {key!r} points")


def bench_mlflow_logging(folder: Path, calls: int, async_calls: int, batch_points: int,
                         batches: int) -> dict[str, dict[str, float]] | None:  # fmt: skip
    """MLflow three ways, each as its docs advise for the case: ``log_metric`` (one
    synchronous write per call), ``log_metric(synchronous=False)`` (queued; a background
    thread writes batches) and ``MlflowClient.log_batch`` (many points per write)."""
    try:
        mlflow = _quiet_mlflow(folder)
    except ImportError:
        return None
    from mlflow.entities import Metric

    figures: dict[str, dict[str, float]] = {}
    with mlflow.start_run() as run:
        mlflow.log_metric("warmup", 0.0, step=0)  # schema creation is not per-call cost
        start = time.perf_counter()
        for step in range(calls):
            mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
        elapsed_s = time.perf_counter() - start
        figures["sync"] = {"calls": calls, "call_us": elapsed_s / calls * 1e6,
                           "calls_per_s": calls / elapsed_s}  # fmt: skip

        start = time.perf_counter()
        for step in range(async_calls):
            mlflow.log_metric("async", 1.0 / (step + 1), step=step, synchronous=False)
        calls_s = time.perf_counter() - start
        mlflow.flush_async_logging()
        durable_s = time.perf_counter() - start
        figures["async"] = {"calls": async_calls, "call_us": calls_s / async_calls * 1e6,
                            "calls_per_s": async_calls / calls_s,
                            "durable_points_per_s": async_calls / durable_s}  # fmt: skip

        client, now_ms = mlflow.MlflowClient(), int(time.time() * 1000)
        start = time.perf_counter()
        for first in range(0, batch_points * batches, batch_points):
            points = [
                Metric("batched", 1.0 / (s + 1), now_ms, s)
                for s in range(first, first + batch_points)
            ]
            client.log_batch(run.info.run_id, metrics=points)
        elapsed_s = time.perf_counter() - start
        total = batch_points * batches
        figures["batch"] = {"points": total, "batch_points": batch_points,
                            "call_ms": elapsed_s / batches * 1e3,
                            "durable_points_per_s": total / elapsed_s}  # fmt: skip
    for key, expected in (("loss", calls), ("async", async_calls), ("batched", total)):
        _check_mlflow(mlflow, run.info.run_id, key, expected)
    return figures


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
    parser.add_argument(
        "--flushed-calls", type=int, default=300, help="kilowatt calls with a flush after each"
    )
    parser.add_argument("--mlflow-calls", type=int, default=300, help="MLflow log_metric calls")
    parser.add_argument(
        "--mlflow-async-calls", type=int, default=20_000, help="MLflow synchronous=False calls"
    )
    parser.add_argument("--mlflow-batch", type=int, default=1_000, help="points per log_batch")
    parser.add_argument("--mlflow-batches", type=int, default=20, help="log_batch calls")
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
        kilowatt = bench_kilowatt_logging(folder, args.points, args.flushed_calls)
        baseline = bench_mlflow_logging(
            folder, args.mlflow_calls, args.mlflow_async_calls, args.mlflow_batch,
            args.mlflow_batches,
        )  # fmt: skip
        read = bench_history_read(folder, args.history, args.history_batch)
    report(kilowatt, baseline, read)


def _fmt(value: float | None, pattern: str) -> str:
    return "n/a" if value is None else pattern.format(value)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


#: What a crash (SIGKILL, power loss) loses, by how each row commits.
LOSES = {
    "kw": "<= 1 s window (unflushed buffer)",
    "kw_flushed": "nothing returned",
    "mlf_sync": "nothing returned",
    "mlf_async": "the queue not yet written",
    "mlf_batch": "the caller's unsent batch",
}


def report(
    kw: dict[str, float], mlf: dict[str, dict[str, float]] | None, read: dict[str, float]
) -> None:
    mlf = mlf or {}
    sync, lazy, batch = mlf.get("sync", {}), mlf.get("async", {}), mlf.get("batch", {})
    ratios = {
        # like with like: one point per call, neither durable when the call returns
        "buffered_vs_mlflow_async": _ratio(kw["calls_per_s"], lazy.get("calls_per_s")),
        # like with like: one point per call, committed before the call returns
        "flushed_vs_mlflow_sync": _ratio(kw["flushed_calls_per_s"], sync.get("calls_per_s")),
        # like with like: points committed per second in bulk
        "durable_vs_mlflow_batch": _ratio(
            kw["durable_points_per_s"], batch.get("durable_points_per_s")
        ),
        # not like with like (a buffered call against a committed one): shown as it falls
        "buffered_vs_mlflow_sync": _ratio(kw["calls_per_s"], sync.get("calls_per_s")),
    }
    rows = [
        ("kilowatt log_metrics (buffered)", _fmt(kw["call_us"], "{:.2f} us"),
         _fmt(kw["calls_per_s"], "{:,.0f}/s"), LOSES["kw"]),
        ("MLflow log_metric(synchronous=False)", _fmt(lazy.get("call_us"), "{:.1f} us"),
         _fmt(lazy.get("calls_per_s"), "{:,.0f}/s"), LOSES["mlf_async"]),
        ("  ratio, like with like (target >= 100x)",
         _fmt(ratios["buffered_vs_mlflow_async"], "{:,.1f}x"), "", ""),
        ("kilowatt log_metrics + flush() per call", _fmt(kw["flushed_call_us"], "{:.0f} us"),
         _fmt(kw["flushed_calls_per_s"], "{:,.0f}/s"), LOSES["kw_flushed"]),
        ("MLflow log_metric (synchronous)", _fmt(sync.get("call_us"), "{:.0f} us"),
         _fmt(sync.get("calls_per_s"), "{:,.0f}/s"), LOSES["mlf_sync"]),
        ("  ratio, like with like", _fmt(ratios["flushed_vs_mlflow_sync"], "{:,.1f}x"), "", ""),
        ("kilowatt durable (buffered + final flush)", "",
         _fmt(kw["durable_points_per_s"], "{:,.0f}/s"), LOSES["kw"]),
        (f"MLflow log_batch ({batch.get('batch_points', 0):,} points/call)",
         _fmt(batch.get("call_ms"), "{:.1f} ms/call"),
         _fmt(batch.get("durable_points_per_s"), "{:,.0f}/s"), LOSES["mlf_batch"]),
        ("  ratio, like with like", _fmt(ratios["durable_vs_mlflow_batch"], "{:,.1f}x"), "", ""),
        ("buffered kilowatt / synchronous MLflow (unlike)",
         _fmt(ratios["buffered_vs_mlflow_sync"], "{:,.0f}x"), "", ""),
        (f"read {read['points']:,}-point history, {read['batch_points']:,}-point batches (< 1 s)",
         _fmt(read["best_s"], "{:.3f} s best"), _fmt(read["first_s"], "{:.3f} s first"), ""),
    ]  # fmt: skip
    width = max(len(row[0]) for row in rows)
    print(f"{'measure':<{width}}  {'per call':>14}  {'rate':>16}  a crash loses")
    for name, value, rate, loses in rows:
        print(f"{name:<{width}}  {value:>14}  {rate:>16}  {loses}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "benchmark": "tracking",
        "when_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "kilowatt": kw,
        "mlflow": mlf or None,
        "ratios": ratios,
        "crash_loses": LOSES,
        "history_read": read,
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
