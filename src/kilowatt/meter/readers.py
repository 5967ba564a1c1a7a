"""Power readers: cumulative energy counters attributed to this job.

Every reader answers one question, ``energy_j()``: the energy this job's devices or process
drew since the reader was made, in joules, as a counter that only grows. A reader that
cannot read raises ``MeterUnavailable``; ``EnergyMeter`` then warns once and falls back
to an estimate whose ``method`` says so. Readers never return a silent zero.

    EnergyReader (Protocol)
    ├── NvmlReader       measured-nvml      the job's NVIDIA GPUs (energy counter or power samples)
    ├── RaplReader       measured-rapl      CPU package counters x this process's CPU-time share
    ├── CpuTimeReader    estimated-cpu-time this process's CPU seconds x watts per core
    ├── TdpReader        estimated-tdp      a constant power (e.g. a device's TDP) x elapsed time
    └── CounterReader    any                a plain function, for tests and custom sources
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from kilowatt.errors import MeterUnavailable

__all__ = [
    "METHODS",
    "CounterReader",
    "CpuTimeReader",
    "EnergyReader",
    "NvmlReader",
    "RaplReader",
    "TdpReader",
    "process_cpu_s",
]

#: Every method a figure can carry, from most to least direct.
METHODS = (
    "measured-nvml",
    "measured-rapl",
    "estimated-cpu-time",
    "estimated-tdp",
    "planned",
)

Clock = Callable[[], float]

_RAPL_ROOT = Path("/sys/class/powercap")


@runtime_checkable
class EnergyReader(Protocol):
    """A cumulative energy counter for part of this job (devices or process)."""

    name: str
    method: str

    def energy_j(self) -> float:
        """Joules drawn since the reader was made; raises ``MeterUnavailable``."""
        ...


def process_cpu_s(include_children: bool = True) -> float:
    """CPU seconds (user + system) of this process, and of its reaped children if asked."""
    times = os.times()
    total = times.user + times.system
    if include_children:
        total += times.children_user + times.children_system
    return total


@dataclass
class CounterReader:
    """Wraps a function returning cumulative joules; tests pass ``itertools.count`` steps.

    >>> import itertools
    >>> counter = itertools.count(0.0, 10.0)
    >>> reader = CounterReader(lambda: next(counter), method="measured-nvml")
    >>> reader.energy_j(), reader.energy_j()
    (0.0, 10.0)
    """

    read_j: Callable[[], float]
    method: str = "measured-nvml"
    name: str = "counter"

    def energy_j(self) -> float:
        return float(self.read_j())


@dataclass
class TdpReader:
    """A constant draw (a device's TDP, or a measured idle power) times elapsed seconds."""

    power_w: float
    clock: Clock = time.monotonic
    method: str = "estimated-tdp"
    name: str = "tdp"

    def __post_init__(self) -> None:
        if self.power_w < 0:
            raise ValueError(f"power_w must be >= 0 watts, got {self.power_w}")
        self._start_s = self.clock()

    def energy_j(self) -> float:
        return self.power_w * (self.clock() - self._start_s)


class CpuTimeReader:
    """This process's CPU seconds x watts per busy core (the catalog's ``cpu_watts_per_core``).

    Attributes to this process only, so other jobs on a shared host do not inflate it.

    Args:
        watts_per_core: average power of one fully busy core, in watts.
        cpu_s: CPU-seconds source; defaults to this process (and its reaped children).
    """

    method = "estimated-cpu-time"
    name = "cpu-time"

    def __init__(self, watts_per_core: float, cpu_s: Callable[[], float] = process_cpu_s) -> None:
        if watts_per_core <= 0:
            raise ValueError(f"watts_per_core must be > 0, got {watts_per_core}")
        self.watts_per_core = watts_per_core
        self._cpu_s = cpu_s
        self._start_cpu_s = cpu_s()

    def energy_j(self) -> float:
        return (self._cpu_s() - self._start_cpu_s) * self.watts_per_core


def _host_cpu_s() -> float:
    import psutil

    times = psutil.cpu_times()
    return float(sum(times)) - float(getattr(times, "idle", 0.0)) - float(times.iowait or 0.0)


class RaplReader:
    """Intel/AMD RAPL package counters, scaled by this process's share of busy CPU time.

    RAPL measures whole packages, so on a shared host the package energy of each interval is
    multiplied by (this process's CPU seconds / all busy CPU seconds) in that interval; the
    ``note`` says so. Counters wrap at ``max_energy_range_uj``; ``poll`` (called by the
    sampler thread) must run more often than one wrap period (minutes at full load).

    Raises:
        MeterUnavailable: no package counters exist or they are not readable (often root-only).
    """

    method = "measured-rapl"
    name = "rapl"
    note = "RAPL package energy scaled by this process's share of busy CPU time"

    def __init__(
        self,
        root: Path = _RAPL_ROOT,
        process_cpu: Callable[[], float] = process_cpu_s,
        host_cpu: Callable[[], float] = _host_cpu_s,
    ) -> None:
        self._zones = _rapl_packages(root)
        self._process_cpu = process_cpu
        self._host_cpu = host_cpu
        self._lock = threading.Lock()
        self._last_uj = [self._read_uj(zone) for zone in self._zones]
        self._last_process_s = process_cpu()
        self._last_host_s = host_cpu()
        self._total_j = 0.0

    def energy_j(self) -> float:
        with self._lock:
            package_j = 0.0
            for index, zone in enumerate(self._zones):
                now_uj = self._read_uj(zone)
                delta_uj = now_uj - self._last_uj[index]
                if delta_uj < 0:  # the counter wrapped since the last read
                    delta_uj += _read_int(zone / "max_energy_range_uj")
                self._last_uj[index] = now_uj
                package_j += delta_uj / 1e6
            process_s, host_s = self._process_cpu(), self._host_cpu()
            share = _share(process_s - self._last_process_s, host_s - self._last_host_s)
            self._last_process_s, self._last_host_s = process_s, host_s
            self._total_j += package_j * share
            return self._total_j

    @staticmethod
    def _read_uj(zone: Path) -> int:
        return _read_int(zone / "energy_uj")


def _share(process_s: float, host_s: float) -> float:
    if host_s <= 0:
        return 0.0 if process_s <= 0 else 1.0
    return min(1.0, max(0.0, process_s / host_s))


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError) as exc:
        raise MeterUnavailable(
            f"cannot read RAPL counter {path} ({exc}); "
            "grant read access (e.g. `sudo chmod o+r` on it) or rely on the CPU-time estimate"
        ) from None


def _rapl_packages(root: Path) -> list[Path]:
    # Top-level zones (intel-rapl:0, intel-rapl:1) are packages; sub-zones (intel-rapl:0:0)
    # are parts of them and would double count.
    zones = sorted(p for p in root.glob("intel-rapl:*") if p.name.count(":") == 1)
    if not zones:
        raise MeterUnavailable(
            f"no RAPL package counters under {root}; this CPU or kernel does not expose them"
        )
    return zones


class NvmlReader:
    """The job's NVIDIA GPUs via NVML: the total-energy counter where the GPU has one
    (Volta and newer), otherwise power samples integrated by the trapezoid rule.

    Only the given device indices are read, so other jobs' GPUs on the host are not counted.

    Args:
        device_indices: NVML indices of this job's GPUs (default: ``CUDA_VISIBLE_DEVICES``
            or every GPU).
        nvml: the ``pynvml`` module, or an object with the same functions (tests pass a
            replay of recorded samples).
        clock: monotonic seconds, for integrating power samples.

    Raises:
        MeterUnavailable: pynvml is missing, NVML cannot start, or no GPU is visible.
    """

    method = "measured-nvml"
    name = "nvml"

    def __init__(
        self,
        device_indices: Sequence[int] | None = None,
        nvml: Any = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self._nvml = nvml if nvml is not None else _import_pynvml()
        self._clock = clock
        self._lock = threading.Lock()
        try:
            self._nvml.nvmlInit()
            count = self._nvml.nvmlDeviceGetCount()
        except Exception as exc:  # NVMLError has many subclasses; all mean "cannot read"
            raise MeterUnavailable(
                f"NVML cannot start ({exc}); is the NVIDIA driver loaded?"
            ) from None
        indices = _visible_indices(device_indices, count)
        self._handles = [self._nvml.nvmlDeviceGetHandleByIndex(i) for i in indices]
        if not self._handles:
            raise MeterUnavailable("NVML sees no GPU for this job; set CUDA_VISIBLE_DEVICES")
        self.device_indices = indices
        self._counter = [self._has_counter(h) for h in self._handles]
        self._start_mj = [
            self._read_mj(h) if c else 0.0
            for h, c in zip(self._handles, self._counter, strict=True)
        ]
        self._integrated_j = [0.0] * len(self._handles)
        self._last_sample = [
            (0.0, 0.0) if c else self._sample(h)
            for h, c in zip(self._handles, self._counter, strict=True)
        ]

    def energy_j(self) -> float:
        with self._lock:
            total_j = 0.0
            for i, handle in enumerate(self._handles):
                if self._counter[i]:
                    total_j += (self._read_mj(handle) - self._start_mj[i]) / 1e3
                else:
                    total_j += self._integrate(i, handle)
            return total_j

    def power_w(self) -> list[float]:
        """Instantaneous power of each device, in watts."""
        return [self._nvml.nvmlDeviceGetPowerUsage(h) / 1e3 for h in self._handles]

    def utilisation(self) -> list[float]:
        """GPU busy fraction (0..1) of each device over NVML's last sample period."""
        return [self._nvml.nvmlDeviceGetUtilizationRates(h).gpu / 100.0 for h in self._handles]

    def poll(self) -> None:
        """Take a power sample; the sampler thread calls this so the integral stays fine."""
        self.energy_j()

    def _has_counter(self, handle: Any) -> bool:
        try:
            self._nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        except Exception:  # NVMLError_NotSupported on pre-Volta GPUs
            return False
        return True

    def _read_mj(self, handle: Any) -> float:
        try:
            return float(self._nvml.nvmlDeviceGetTotalEnergyConsumption(handle))
        except Exception as exc:
            raise MeterUnavailable(f"NVML energy counter read failed: {exc}") from None

    def _sample(self, handle: Any) -> tuple[float, float]:
        try:
            return self._clock(), self._nvml.nvmlDeviceGetPowerUsage(handle) / 1e3
        except Exception as exc:
            raise MeterUnavailable(f"NVML power read failed: {exc}") from None

    def _integrate(self, i: int, handle: Any) -> float:
        t0_s, p0_w = self._last_sample[i]
        t1_s, p1_w = self._sample(handle)
        self._integrated_j[i] += 0.5 * (p0_w + p1_w) * (t1_s - t0_s)
        self._last_sample[i] = (t1_s, p1_w)
        return self._integrated_j[i]


def _import_pynvml() -> Any:
    try:
        import pynvml
    except ImportError:
        raise MeterUnavailable(
            "pynvml is not installed; `pip install nvidia-ml-py` to measure NVIDIA GPUs"
        ) from None
    return pynvml


def _visible_indices(requested: Sequence[int] | None, count: int) -> list[int]:
    if requested is not None:
        bad = [i for i in requested if not 0 <= i < count]
        if bad:
            raise MeterUnavailable(f"GPU indices {bad} not present; NVML sees {count} GPU(s)")
        return list(requested)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return list(range(count))
    # Only integer indices map to NVML indices; UUID lists fall back to every GPU.
    parts = [p.strip() for p in visible.split(",") if p.strip()]
    if all(p.isdigit() for p in parts):
        return [int(p) for p in parts if int(p) < count]
    return list(range(count))
