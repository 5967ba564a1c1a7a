"""Tune ``kilowatt serve``'s configuration for the least energy per request within an SLO.

Each configuration is a ``ServeSpec``: the server runs as ``kilowatt serve --spec`` in a
process group of its own, kilowatt's load generator drives it closed-loop, and the energy of
the window is the server's processes' CPU time x the catalog's watts per core (the meter's
``estimated-cpu-time`` method, here over the whole serving process tree: HTTP parsing and
batching count, not only forward passes). The search is coarse (batch limit x threads),
then fine around the best (neighbouring batch limits, a fixed batch window, two workers),
and stops at its time budget. A single window on a busy machine can be off by tens of
percent, so the defaults and the best few found are then measured again, interleaved
(each round in a rotated order, so slow spells fall on all of them), and the choice is made
on the median of each one's windows.

>>> result = tune_serving(ServeSpec(models=[...]), slo_p99_s=0.05)  # doctest: +SKIP
>>> result.best.spec.batching.max_batch_size  # doctest: +SKIP
16
"""

from __future__ import annotations

import contextlib
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kilowatt.host import available_cores
from kilowatt.spec import ServeSpec

__all__ = [
    "ConfigResult",
    "SweepResult",
    "measure_config",
    "median_of",
    "oip_body",
    "tune_serving",
]

_READY_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class ConfigResult:
    """One configuration under load.

    Attributes:
        label: what differs from the defaults, in words.
        spec: the configuration.
        requests: successful requests in the window.
        errors: failed requests (429, 503, ...).
        throughput_rps / p99_s: from the load generator.
        energy_per_request_j: server joules / successful requests.
        meets_slo: p99 within the SLO and no errors.
        energy_samples_j: each window's energy per request, when the figures are the
            median of repeated windows (empty for a single window).
    """

    label: str
    spec: ServeSpec
    requests: int
    errors: int
    throughput_rps: float
    p99_s: float
    energy_per_request_j: float
    meets_slo: bool
    energy_samples_j: tuple[float, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label, "requests": self.requests, "errors": self.errors,
            "throughput_rps": self.throughput_rps, "p99_s": self.p99_s,
            "energy_per_request_j": self.energy_per_request_j, "meets_slo": self.meets_slo,
            "energy_samples_j": list(self.energy_samples_j),
            "spec": json.loads(self.spec.model_dump_json()),
        }  # fmt: skip


def median_of(windows: Sequence[ConfigResult], slo_p99_s: float) -> ConfigResult:
    """One configuration's repeated windows as one result: median throughput, p99 and
    energy per request, requests and errors summed; it meets the SLO when its median p99
    does and no window had errors.

    >>> from kilowatt.spec import ModelSpec
    >>> spec = ServeSpec(models=[ModelSpec(name="m", source="m.onnx")])
    >>> runs = [ConfigResult("a", spec, 10, 0, 5.0, p99, j, True) for p99, j in
    ...         [(0.01, 3.0), (0.03, 1.0), (0.02, 2.0)]]
    >>> merged = median_of(runs, slo_p99_s=0.025)
    >>> merged.p99_s, merged.energy_per_request_j, merged.requests, merged.meets_slo
    (0.02, 2.0, 30, True)
    """
    energies = [w.energy_per_request_j for w in windows]
    errors = sum(w.errors for w in windows)
    p99_s = statistics.median(w.p99_s for w in windows)
    return ConfigResult(
        windows[0].label, windows[0].spec, sum(w.requests for w in windows), errors,
        statistics.median(w.throughput_rps for w in windows), p99_s,
        statistics.median(energies), errors == 0 and p99_s <= slo_p99_s, tuple(energies),
    )  # fmt: skip


@dataclass
class SweepResult:
    """Every configuration tried, the defaults' figures and the best within the SLO.

    ``confirmed`` holds the defaults (first) and the best few of the search, each the
    median of its repeated windows; when present, they are what the choice and the
    comparison with the defaults rest on.
    """

    default: ConfigResult
    tried: list[ConfigResult] = field(default_factory=list)
    confirmed: list[ConfigResult] = field(default_factory=list)
    method: str = "estimated-cpu-time (server process tree)"

    @property
    def defaults(self) -> ConfigResult:
        """The defaults' figures: confirmed ones when there are."""
        return self.confirmed[0] if self.confirmed else self.default

    @property
    def best(self) -> ConfigResult:
        """Least energy per request among those meeting the SLO (the defaults if none)."""
        pool = self.confirmed or [self.default, *self.tried]
        meeting = [r for r in pool if r.meets_slo]
        if not meeting:
            return pool[0]
        return min(meeting, key=lambda r: r.energy_per_request_j)

    def leaders(self, count: int) -> list[ConfigResult]:
        """The ``count`` configurations of the search with the least energy per request
        among those meeting the SLO (the defaults excluded)."""
        meeting = [r for r in self.tried if r.meets_slo]
        return sorted(meeting, key=lambda r: r.energy_per_request_j)[:count]


def oip_body(sample: Any, name: str = "input") -> bytes:
    """An Open Inference Protocol request body carrying one sample (batch of one)."""
    import numpy as np

    row = np.asarray(sample, dtype=np.float32).reshape(1, -1)
    tensor = {"name": name, "shape": list(row.shape), "datatype": "FP32",
              "data": row.ravel().tolist()}  # fmt: skip
    return json.dumps({"inputs": [tensor]}).encode()


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and its live descendants (the server's workers)."""
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system
    return total


@contextlib.contextmanager
def _serving(spec: ServeSpec, folder: Path) -> Iterator[tuple[str, int]]:
    """``kilowatt serve --spec`` as a child in its own process group, on the port it binds
    itself; yields (URL, pid)."""
    from kilowatt.serve.process import ServerProcess

    spec = spec.model_copy(update={"port": 0, "host": "127.0.0.1"})
    spec_file = folder / "serve.json"
    spec_file.write_text(spec.model_dump_json())
    with ServerProcess(
        ["--spec", str(spec_file)], log_path=folder / "serve.log", ready_timeout_s=_READY_TIMEOUT_S
    ) as server:
        yield server.endpoint, server.pid


def measure_config(
    label: str,
    spec: ServeSpec,
    body: bytes,
    slo_p99_s: float,
    concurrency: int,
    duration_s: float,
    watts_per_core: float,
) -> ConfigResult:
    """Serve ``spec``, warm it up, then load it closed-loop at ``concurrency`` for
    ``duration_s`` and account the server's energy over the window."""
    from kilowatt.bench.loadgen import LoadSpec, run_scenarios

    model = spec.models[0].name
    folder = tempfile.TemporaryDirectory(prefix="kilowatt-tune-")
    with folder, _serving(spec, Path(folder.name)) as (url, pid):
        load = LoadSpec(
            url=f"{url}/v2/models/{model}/infer", body=body, scenario="sweep",
            concurrencies=(concurrency,), duration_s=duration_s, slo_s=slo_p99_s,
        )  # fmt: skip
        warm = LoadSpec(**{**load.__dict__, "duration_s": min(1.0, duration_s)})
        run_scenarios(warm)
        cpu_before = _tree_cpu_s(pid)
        result = run_scenarios(load)[0]
        cpu_s = _tree_cpu_s(pid) - cpu_before
    energy_j = cpu_s * watts_per_core
    return ConfigResult(
        label, spec, result.ok, result.errors, result.throughput_rps, result.p99_s,
        energy_j / max(result.ok, 1), result.errors == 0 and result.p99_s <= slo_p99_s,
    )  # fmt: skip


def _with(spec: ServeSpec, **changes: Any) -> ServeSpec:
    batching = {k: changes.pop(k) for k in list(changes) if k in type(spec.batching).model_fields}
    update = dict(changes)
    if batching:
        update["batching"] = spec.batching.model_copy(update=batching)
    return spec.model_copy(update=update)


def _coarse(spec: ServeSpec, cores: int) -> list[tuple[str, ServeSpec]]:
    grid = []
    for threads in sorted({1, cores}):
        for batch in (1, 8, 32):
            label = f"batch<={batch}, {threads} thread(s)"
            grid.append((label, _with(spec, max_batch_size=batch, threads_per_worker=threads)))
    return grid


def _fine(best: ConfigResult, cores: int) -> list[tuple[str, ServeSpec]]:
    spec = best.spec
    batch = spec.batching.max_batch_size
    threads = spec.threads_per_worker or cores
    candidates = [
        (f"batch<={max(1, batch // 2)}", _with(spec, max_batch_size=max(1, batch // 2))),
        (f"batch<={batch * 2}", _with(spec, max_batch_size=batch * 2)),
        ("fixed 2 ms window", _with(spec, adaptive=False, max_queue_delay_s=0.002)),
    ]
    if cores > 1 and threads > 1:
        candidates.append(
            ("2 workers x1 thread", _with(spec, workers=2, threads_per_worker=1))
        )  # fmt: skip
    return [(f"{best.label}; {label}", s) for label, s in candidates]


def tune_serving(
    spec: ServeSpec,
    body: bytes,
    slo_p99_s: float,
    *,
    concurrency: int = 8,
    duration_s: float = 3.0,
    time_budget_s: float = 120.0,
    confirm_top: int = 3,
    confirm_rounds: int = 2,
    watts_per_core: float | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> SweepResult:
    """Measure the defaults, a coarse grid, then a fine step around the best, within
    ``time_budget_s``; then measure the defaults and the ``confirm_top`` best again
    ``confirm_rounds`` times, interleaved (outside the budget: at most
    ``(confirm_top + 1) * confirm_rounds`` windows), and choose on the medians."""
    from kilowatt.meter import cpu_watts_per_core

    watts = watts_per_core if watts_per_core is not None else cpu_watts_per_core(None, "local-cpu")
    cores = available_cores()  # counted as the server under tuning counts them
    start = time.monotonic()

    def run(label: str, config: ServeSpec) -> ConfigResult:
        progress(f"serving config: {label}")
        return measure_config(label, config, body, slo_p99_s, concurrency, duration_s, watts)

    result = SweepResult(default=run("kilowatt serve defaults", spec))
    for label, config in _coarse(spec, cores):
        if time.monotonic() - start > time_budget_s:
            break
        result.tried.append(run(label, config))
    else:
        for label, config in _fine(result.best, cores):
            if time.monotonic() - start > time_budget_s:
                break
            result.tried.append(run(label, config))
    if confirm_rounds > 0:
        finalists = [result.default, *result.leaders(confirm_top)]
        result.confirmed = _confirm(finalists, confirm_rounds, slo_p99_s, run)
    return result


def _confirm(
    finalists: list[ConfigResult],
    rounds: int,
    slo_p99_s: float,
    run: Callable[[str, ServeSpec], ConfigResult],
) -> list[ConfigResult]:
    """Each finalist's median over its first window and ``rounds`` more, interleaved: round
    ``r`` starts at finalist ``r`` so no configuration always runs first or last."""
    windows: list[list[ConfigResult]] = [[f] for f in finalists]
    for round_index in range(rounds):
        for offset in range(len(finalists)):
            index = (round_index + offset) % len(finalists)
            windows[index].append(run(finalists[index].label, finalists[index].spec))
    return [median_of(w, slo_p99_s) for w in windows]
