"""Measure one saved variant in a process of its own, loaded the way ``kilowatt serve``
loads it: outputs on the eval inputs, resident memory, batch-1 latency, throughput at the
best batch size and joules per 1,000 inferences from ``kilowatt.meter``.

A fresh process per variant keeps the figures apart: its resident memory is that variant's,
its thread setting is its own, and the meter's per-process reading counts only its work.

    python -m kilowatt.optimize.measure CONFIG.json   # writes CONFIG.json's "result" file
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kilowatt.errors import KilowattError

__all__ = ["Effort", "Figures", "load_served", "measure_file"]


@dataclass(frozen=True)
class Effort:
    """How long to measure: more iterations give steadier figures.

    Attributes:
        latency_iterations: batch-1 calls timed for p50/p99.
        batch_sizes: sizes tried for throughput.
        seconds_per_batch_size: run time at each size.
        energy_s: run time of the energy window at the best size (and at batch 1).
    """

    latency_iterations: int = 300
    batch_sizes: tuple[int, ...] = (1, 8, 32, 128, 512)
    seconds_per_batch_size: float = 0.5
    energy_s: float = 2.0

    @classmethod
    def quick(cls) -> Effort:
        """A few iterations: enough to rank variants, not to publish figures."""
        return cls(latency_iterations=30, batch_sizes=(1, 16), seconds_per_batch_size=0.1,
                   energy_s=0.2)  # fmt: skip


@dataclass(frozen=True)
class Figures:
    """What one variant at one thread count measured.

    Attributes:
        rss_bytes: resident memory of the serving process after loading and warm-up.
        latency_p50_s / latency_p99_s: one sample per call (batch 1).
        throughput_per_s: inferences per second at ``best_batch_size``.
        energy_per_1000_j: joules per 1,000 inferences at ``best_batch_size``.
        energy_per_1000_batch1_j: joules per 1,000 inferences one at a time.
        energy_method: how the joules were obtained (``estimated-cpu-time``, ...).
    """

    rss_bytes: int
    latency_p50_s: float
    latency_p99_s: float
    throughput_per_s: float
    best_batch_size: int
    energy_per_1000_j: float
    energy_per_1000_batch1_j: float
    energy_method: str


def measure_file(
    path: Path,
    threads: int,
    inputs_file: Path,
    effort: Effort,
    serve_hints: dict[str, str] | None = None,
    timeout_s: float = 600.0,
) -> tuple[Figures, np.ndarray]:
    """Measure ``path`` in a child process; return its figures and its eval outputs.

    ``serve_hints`` are the ``ModelSpec`` fields needed to read the file (``format``,
    ``factory``), as ``kilowatt serve`` would be given them.

    Raises:
        KilowattError: the child failed (its last error line is in the message).
    """
    config = {
        "model": str(path), "hints": serve_hints or {}, "threads": threads,
        "inputs": str(inputs_file),
        "effort": asdict(effort), "result": str(path.with_suffix(f".{threads}t.json")),
        "outputs": str(path.with_suffix(f".{threads}t.npy")),
    }  # fmt: skip
    config_file = path.with_suffix(f".{threads}t.config.json")
    config_file.write_text(json.dumps(config))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": _import_path()}
    done = subprocess.run(
        [sys.executable, "-m", "kilowatt.optimize.measure", str(config_file)],
        capture_output=True, text=True, timeout=timeout_s, env=env, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        raise KilowattError(lines[-1] if lines else f"measuring {path.name} failed")
    raw = json.loads(Path(config["result"]).read_text())
    return Figures(**raw), np.load(config["outputs"])


def _import_path() -> str:
    """This process's own import folders (not the interpreter's): the child must import
    the same factory modules the caller did, wherever they were found."""
    inherited = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    own = [
        entry for entry in sys.path
        if entry and not entry.startswith((sys.prefix, sys.base_prefix))
    ]  # fmt: skip
    return os.pathsep.join(dict.fromkeys(p for p in [*inherited, *own] if p))


def _rss_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def _latencies(predict: Any, inputs: np.ndarray, iterations: int) -> list[float]:
    samples = []
    for index in range(iterations):
        row = inputs[index % len(inputs)][None]
        start = time.perf_counter()
        predict(row)
        samples.append(time.perf_counter() - start)
    return samples


def _batch_of(inputs: np.ndarray, size: int) -> np.ndarray:
    repeats = -(-size // len(inputs))
    return np.ascontiguousarray(np.concatenate([inputs] * repeats)[:size])


def _rate(predict: Any, batch: np.ndarray, seconds: float) -> tuple[int, float]:
    """Run ``batch`` repeatedly for about ``seconds``; return (inferences, seconds)."""
    done, start = 0, time.perf_counter()
    while True:
        predict(batch)
        done += len(batch)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done, elapsed


def _energy_per_1000(
    meter: Any, predict: Any, batch: np.ndarray, seconds: float
) -> tuple[float, str]:
    """Joules per 1,000 inferences over a window of about ``seconds``, and the method."""
    meter.begin_window("variant")
    count, _ = _rate(predict, batch, seconds)
    measurement = meter.end_window("variant")
    return float(measurement.energy_j) * 1000.0 / count, str(measurement.method)


def load_served(path: Path, threads: int, serve_hints: dict[str, str] | None = None) -> Any:
    """The loaded ``kilowatt serve`` handler of a saved variant file (``.predict(batch)``),
    running ``threads`` intra-op threads."""
    from kilowatt.serve.handler import load_handler
    from kilowatt.spec import ModelSpec

    spec = ModelSpec(name="variant", source=str(path), **(serve_hints or {}))
    handler: Any
    if spec.source.endswith(".onnx"):
        from kilowatt.serve.onnx_handler import OnnxHandler

        handler = OnnxHandler(spec.source, threads=threads)  # no torch to import
    else:
        import torch

        torch.set_num_threads(threads)
        handler = load_handler(spec)
    handler.load()
    return handler


def _child(config_file: Path) -> None:
    from kilowatt.meter import EnergyMeter

    config = json.loads(config_file.read_text())
    effort = Effort(**{**config["effort"], "batch_sizes": tuple(config["effort"]["batch_sizes"])})
    inputs = np.load(config["inputs"])
    meter = EnergyMeter.for_this_process()
    predict = load_served(Path(config["model"]), config["threads"], config["hints"]).predict
    outputs = np.concatenate(
        [np.asarray(predict(inputs[i : i + 256])) for i in range(0, len(inputs), 256)]
    )
    latencies = _latencies(predict, inputs, effort.latency_iterations)
    rss = _rss_bytes()
    rates = {}
    for size in effort.batch_sizes:
        count, elapsed = _rate(predict, _batch_of(inputs, size), effort.seconds_per_batch_size)
        rates[size] = count / elapsed
    best = max(rates, key=rates.__getitem__)
    energy_j, method = _energy_per_1000(meter, predict, _batch_of(inputs, best), effort.energy_s)
    energy_batch1_j, _ = _energy_per_1000(meter, predict, inputs[:1], effort.energy_s / 2)
    figures = Figures(
        rss_bytes=rss,
        latency_p50_s=float(np.percentile(latencies, 50)),
        latency_p99_s=float(np.percentile(latencies, 99)),
        throughput_per_s=rates[best],
        best_batch_size=best,
        energy_per_1000_j=energy_j,
        energy_per_1000_batch1_j=energy_batch1_j,
        energy_method=method,
    )
    np.save(config["outputs"], outputs)
    Path(config["result"]).write_text(json.dumps(asdict(figures)))


if __name__ == "__main__":
    _child(Path(sys.argv[1]))
