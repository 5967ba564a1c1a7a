"""Training overhead and checkpoint stall.

Part 1, the same model, data, optimizer and steps, run in the same process by:

- raw: a hand-written PyTorch loop (DataLoader, forward, backward, step, one final save);
- kilowatt: ``kilowatt.Trainer`` with metering (EnergyMeter + sampler thread), tracking
  (a store-backed recorder writing every logged step) and its final checkpoint;
- lightning: ``lightning.Trainer`` with logging, checkpointing and the progress bar off.

The runs are interleaved: each round runs every variant once, the order rotating every round
so no variant always runs first, and each variant is compared with the raw run of the same
round (seconds apart: on a shared machine the load drifts between rounds far more than
within one). Two figures per run:

- end to end: model build to final save, wall seconds (and this process's CPU seconds);
- per step in the loop: every variant computes its loss through the same stamping function,
  called once per step at the same point of the step, so the interval between two stamps is
  one whole step as that loop runs it (data, forward, backward, optimizer and any
  bookkeeping between steps). After a 20-step warm-up the steps are cut into blocks of 10
  (each block holds exactly one of kilowatt's logged steps, so logging is always counted);
  the wall time per step is the median block's mean, which a burst of load from another
  process moves far less than a total does. The CPU time per step is this process's CPU
  seconds (every thread: kilowatt's sampler and flusher included) from the first stamp to
  the last over the steps between.

Reported: the median over rounds and the spread (min / median / max) of the per-round
differences from the raw loop. Targets: <= 50 us per step in the loop over the raw loop
(median of rounds), and end to end within 2% of the raw loop. All variants run with the
same torch thread count (``--threads``, default 1): an OpenMP pool as wide as the machine
stalls whenever another process takes a core, which swamps what is measured here.

Part 2, checkpoint stall per checkpoint for a ~100M-parameter model: how long the step
loop is blocked by a synchronous save (serialise, write, fsync) versus an asynchronous one
(copy to host memory; the write happens in a background thread). Target: async stall <=
10% of the synchronous save time.

Usage: python bench/train_overhead.py [--steps 800] [--repeats 3] [--threads 1] [--ckpt-saves 3]
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "train_overhead.json"
BATCH = 64
FEATURES, HIDDEN, CLASSES = 256, 512, 10
WARMUP_STEPS, BLOCK_STEPS = 20, 10  # kilowatt logs every 10 steps: one logged step a block

_stamps: list[tuple[float, float]] = []  # (wall, process CPU) seconds at each loss call


def stamped_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy, stamped first: every variant calls it once per step, at the same point."""
    _stamps.append((time.perf_counter(), time.process_time()))
    return functional.cross_entropy(outputs, targets)


def make_model() -> nn.Module:
    return nn.Sequential(
        nn.Linear(FEATURES, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, CLASSES),
    )


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=1e-3)


def make_dataset() -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(8192, FEATURES, generator=generator)
    return TensorDataset(inputs, torch.randint(0, CLASSES, (8192,), generator=generator))


def run_raw(steps: int, folder: Path) -> float:
    started = time.perf_counter()
    torch.manual_seed(0)
    model = make_model()
    optimizer = make_optimizer(model)
    loader = DataLoader(make_dataset(), batch_size=BATCH, shuffle=True, drop_last=True)
    step = 0
    while step < steps:
        for inputs, targets in loader:
            loss = stamped_loss(model(inputs), targets)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step == steps:
                break
    torch.save(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict()}, folder / "raw.pt"
    )
    return time.perf_counter() - started


def run_kilowatt(steps: int, folder: Path) -> float:
    from kilowatt.backends.recorder import StoreRecorder
    from kilowatt.catalog import load_catalog
    from kilowatt.meter import Accountant, EnergyMeter
    from kilowatt.spec import Settings
    from kilowatt.store import start_run
    from kilowatt.train import Trainer

    settings = Settings.from_env()
    started = time.perf_counter()
    catalog = load_catalog()
    with start_run("bench", name="train-overhead", settings=settings) as run:
        trainer = Trainer(
            make_model,
            make_optimizer,
            train_data=make_dataset(),
            loss_fn=stamped_loss,
            steps=steps,
            batch_size=BATCH,
            log_every=10,
            progress=False,
            resume="never",
            checkpoint={"url": str(folder / "kilowatt"), "every": "auto", "keep_last": 1},
            meter=functools.partial(EnergyMeter.for_this_process, catalog),
            accountant=Accountant.from_catalog(catalog),
            callbacks=[StoreRecorder(run.id, settings)],
        )
        trainer.fit()
    return time.perf_counter() - started


def run_lightning(steps: int, folder: Path) -> float:
    import lightning

    class Module(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = make_model()

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            inputs, targets = batch
            return stamped_loss(self.net(inputs), targets)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return make_optimizer(self.net)

    started = time.perf_counter()
    torch.manual_seed(0)
    module = Module()
    loader = DataLoader(make_dataset(), batch_size=BATCH, shuffle=True, drop_last=True)
    trainer = lightning.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(folder / "lightning"),
    )
    trainer.fit(module, loader)
    trainer.save_checkpoint(folder / "lightning.ckpt")
    return time.perf_counter() - started


def run_with_threads(runner: Any, steps: int, folder: Path, threads: int) -> float:
    torch.set_num_threads(threads)  # the same pool for every variant, whatever ran before
    return runner(steps, folder)


def timed(runner: Any, steps: int, folder: Path, threads: int) -> dict[str, float]:
    """One run's end-to-end wall and CPU seconds, and its seconds per step in the loop."""
    _stamps.clear()
    cpu_started = time.process_time()
    wall_s = run_with_threads(runner, steps, folder, threads)
    cpu_s = time.process_time() - cpu_started
    kept = _stamps[WARMUP_STEPS:]
    walls = [wall for wall, _ in kept]
    blocks = [
        (walls[i + BLOCK_STEPS] - walls[i]) / BLOCK_STEPS
        for i in range(0, len(walls) - BLOCK_STEPS, BLOCK_STEPS)
    ]
    loop_s = (_stamps[-1][0] - _stamps[0][0]) * len(_stamps) / (len(_stamps) - 1)
    return {
        "wall_s": wall_s,
        "cpu_s": cpu_s,
        "fixed_s": wall_s - loop_s,  # set-up before the first step and the final save
        "step_s": statistics.median(blocks),
        "step_cpu_s": (kept[-1][1] - kept[0][1]) / (len(kept) - 1),
    }


def overhead(steps: int, repeats: int, threads: int) -> dict[str, dict[str, Any]]:
    """Every variant once per round, the order rotating; each against the same round's raw run."""
    runners = {"raw": run_raw, "kilowatt": run_kilowatt, "lightning": run_lightning}
    names = list(runners)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in runners}
    with tempfile.TemporaryDirectory(prefix="kw-bench-train-") as scratch:
        os.environ["KILOWATT_HOME"] = str(Path(scratch) / "home")
        for runner in runners.values():  # warm-up: imports, allocator, thread pools
            run_with_threads(runner, WARMUP_STEPS, Path(scratch), threads)
        for repeat in range(repeats):
            order = names[repeat % len(names) :] + names[: repeat % len(names)]
            for name in order:
                runs[name].append(timed(runners[name], steps, Path(scratch), threads))
    return {name: _row(runs[name], runs["raw"], steps) for name in runners}


def _row(own: list[dict[str, float]], raw: list[dict[str, float]], steps: int) -> dict[str, Any]:
    total_s = statistics.median(run["wall_s"] for run in own)
    row: dict[str, Any] = {
        "median_s": total_s,
        "steps_per_s": steps / total_s,
        "step_ms": statistics.median(run["step_s"] for run in own) * 1e3,
        "fixed_s": statistics.median(run["fixed_s"] for run in own),
        "runs": own,
    }
    pairs = list(zip(own, raw, strict=True))
    for key, name in (("wall_s", "overhead_vs_raw"), ("cpu_s", "cpu_overhead_vs_raw")):
        ratios = [mine[key] / base[key] - 1.0 for mine, base in pairs]
        row[name], row[f"{name}_spread"] = statistics.median(ratios), _spread(ratios)
    for key, name in (
        ("step_s", "loop_overhead_us_per_step"),
        ("step_cpu_s", "cpu_loop_overhead_us_per_step"),
    ):
        extra_us = [(mine[key] - base[key]) * 1e6 for mine, base in pairs]
        row[name], row[f"{name}_spread"] = statistics.median(extra_us), _spread(extra_us)
    return row


def _spread(values: list[float]) -> dict[str, float]:
    """Min, median and max over the rounds: one figure hides how far runs disagree."""
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def python_calls_per_step(steps: int, threads: int) -> dict[str, float]:
    """Python function calls per step in each loop (slope between two lengths): a count, so
    unlike a time it does not move with the load other jobs put on the machine."""
    import cProfile
    import pstats

    runners = {"raw": run_raw, "kilowatt": run_kilowatt, "lightning": run_lightning}
    short, long = max(1, steps // 8), max(2, steps // 2)
    calls: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="kw-bench-calls-") as scratch:
        os.environ["KILOWATT_HOME"] = str(Path(scratch) / "home")
        for name, runner in runners.items():
            run_with_threads(runner, short, Path(scratch), threads)  # first-use costs
            totals = []
            for count in (short, long):
                profiler = cProfile.Profile()
                profiler.runcall(run_with_threads, runner, count, Path(scratch), threads)
                totals.append(pstats.Stats(profiler).total_calls)  # type: ignore[attr-defined]
            calls[name] = (totals[1] - totals[0]) / (long - short)
    return calls


def make_big_model() -> nn.Module:
    # 10 layers of 3072 x 3072 (+ bias): 94.4M parameters, 378 MB in fp32.
    return nn.Sequential(*[nn.Linear(3072, 3072) for _ in range(10)])


def checkpoint_stall(saves: int) -> dict[str, Any]:
    from kilowatt.train import CheckpointManager

    model = make_big_model()
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    figures: dict[str, Any] = {"parameters": params}
    with tempfile.TemporaryDirectory(prefix="kw-bench-ckpt-") as scratch:
        for mode in ("sync", "async"):
            manager = CheckpointManager(
                str(Path(scratch) / mode), keep_last=1, asynchronous=mode == "async"
            )
            stalls, writes = [], []
            for step in range(1, saves + 1):
                state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
                report = manager.save(step, state, {"step": step})
                stalls.append(report.stall_s)
                # Training goes on: a few forward passes while the writer works.
                with torch.no_grad():
                    for _ in range(3):
                        model(torch.randn(8, 3072))
                manager.wait()
                writes.append(manager.last_write_s)
            manager.close()
            figures[mode] = {
                "stall_s_median": statistics.median(stalls),
                "write_s_median": statistics.median(writes),
                "stalls_s": stalls,
            }
    figures["async_stall_over_sync_save"] = (
        figures["async"]["stall_s_median"] / figures["sync"]["stall_s_median"]
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, every variant")
    parser.add_argument("--ckpt-saves", type=int, default=3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # Lightning's advice about DataLoader workers
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # its per-fit banners
    threads = max(1, args.threads)

    if args.steps < WARMUP_STEPS + 2 * BLOCK_STEPS:
        parser.error(f"--steps must be at least {WARMUP_STEPS + 2 * BLOCK_STEPS}")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    loops = overhead(args.steps, args.repeats, threads)
    print(
        f"\ntraining overhead: {args.steps} steps, batch {BATCH}, {threads} torch thread(s), "
        f"{args.repeats} interleaved round(s), median over rounds"
    )
    print("e2e = model build to final save; 'vs raw' = against the raw run of the same round;")
    print("ms/step = wall per step in the loop (median 10-step block after a 20-step warm-up);")
    print("+us/step = extra per step over raw, wall; cpu = the same on this process's CPU time")
    print(
        f"{'loop':<10} {'e2e (s)':>8} {'steps/s':>8} {'vs raw':>7} {'cpu':>7} "
        f"{'ms/step':>8} {'+us/step':>9} {'cpu':>7} {'fixed (s)':>10}"
    )
    for name, row in loops.items():
        print(
            f"{name:<10} {row['median_s']:>8.3f} {row['steps_per_s']:>8.1f} "
            f"{row['overhead_vs_raw']:>+7.1%} {row['cpu_overhead_vs_raw']:>+7.1%} "
            f"{row['step_ms']:>8.3f} {row['loop_overhead_us_per_step']:>+9.0f} "
            f"{row['cpu_loop_overhead_us_per_step']:>+7.0f} {row['fixed_s']:>10.3f}"
        )

    print("\nspread over the rounds (min / median / max)")
    print(f"{'loop':<10} {'e2e vs raw':>26} {'+us/step, wall':>26} {'+us/step, cpu':>26}")
    for name, row in loops.items():
        if name == "raw":
            continue
        e2e = row["overhead_vs_raw_spread"]
        wall, cpu = (
            row["loop_overhead_us_per_step_spread"],
            row["cpu_loop_overhead_us_per_step_spread"],
        )
        print(
            f"{name:<10} {e2e['min']:>+8.1%} {e2e['median']:>+8.1%} {e2e['max']:>+8.1%} "
            + " ".join(
                f"{d['min']:>+8.0f} {d['median']:>+8.0f} {d['max']:>+8.0f}" for d in (wall, cpu)
            )
        )
    print(
        f"targets: kilowatt +us/step <= 50 (median), end to end within 2% at a "
        f"{loops['raw']['step_ms']:.1f} ms step"
    )

    calls = python_calls_per_step(args.steps, threads)
    print("\npython calls per step in the loop (cProfile, slope; load-independent)")
    for name, count in calls.items():
        print(f"{name:<10} {count:>8.0f}  ({count / calls['raw'] - 1.0:+.1%} vs raw)")

    stall = checkpoint_stall(args.ckpt_saves)
    print(f"\ncheckpoint stall, {stall['parameters'] / 1e6:.1f}M parameters (median of saves)")
    print(f"{'mode':<6} {'stall (s)':>10} {'write (s)':>10}")
    for mode in ("sync", "async"):
        row = stall[mode]
        print(f"{mode:<6} {row['stall_s_median']:>10.3f} {row['write_s_median']:>10.3f}")
    print(f"async stall / sync save: {stall['async_stall_over_sync_save']:.1%} (target <= 10%)")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "benchmark": "train_overhead",
                "command": "python bench/train_overhead.py " + " ".join(sys.argv[1:]),
                "args": vars(args),
                "machine": {
                    "python": platform.python_version(),
                    "torch": torch.__version__,
                    "cpus": os.cpu_count(),
                    "torch_threads": threads,
                },
                "overhead": loops,
                "python_calls_per_step": calls,
                "checkpoint": stall,
                "targets": {
                    "overhead_vs_raw": 0.02,
                    "loop_overhead_us_per_step": 50.0,
                    "async_stall_over_sync_save": 0.10,
                },
            },
            indent=2,
        )
    )
    print(f"\nwrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
