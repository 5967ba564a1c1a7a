"""Named measurement windows over a set of power readers.

>>> import itertools
>>> from kilowatt.meter import CounterReader, EnergyMeter
>>> clock = itertools.count(0.0, 2.0)                   # seconds: 0, 2, 4, ...
>>> counter = itertools.count(0.0, 150.0)               # joules: 0, 150, 300, ...
>>> meter = EnergyMeter([CounterReader(lambda: next(counter))], clock=lambda: next(clock))
>>> meter.begin_window("step")
>>> m = meter.end_window("step")
>>> m.duration_s, m.energy_j, m.method
(2.0, 150.0, 'measured-nvml')
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kilowatt.errors import KilowattError, MeterUnavailable, SpecError
from kilowatt.meter.readers import (
    Clock,
    CpuTimeReader,
    EnergyReader,
    NvmlReader,
    RaplReader,
)

__all__ = ["DEFAULT_CPU_WATTS_PER_CORE", "EnergyMeter", "Measurement", "MeterWarning"]

#: Used only when no catalog can be loaded; the catalog's ``local-cpu`` entry is preferred.
DEFAULT_CPU_WATTS_PER_CORE = 10.0


class MeterWarning(UserWarning):
    """A reader could not read and its figure fell back to an estimate."""


@dataclass(frozen=True)
class Measurement:
    """What one window cost: seconds and joules, and how the joules were obtained.

    Attributes:
        duration_s: wall seconds between ``begin_window`` and ``end_window``.
        energy_j: joules attributed to this job over the window (all readers summed).
        method: how ``energy_j`` was obtained; one of ``readers.METHODS``, or several joined
            by ``+`` when devices were read differently (e.g. ``measured-nvml+measured-rapl``).
        energy_by_reader_j: the joules of each reader, by reader name.
        notes: caveats a reader attaches (e.g. RAPL's share-of-CPU attribution, a fallback).
    """

    duration_s: float
    energy_j: float
    method: str
    energy_by_reader_j: dict[str, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def power_w(self) -> float:
        """Average power over the window, in watts (0 for an empty window)."""
        return self.energy_j / self.duration_s if self.duration_s > 0 else 0.0


@dataclass
class _Window:
    start_s: float
    start_j: list[float]


class EnergyMeter:
    """Measures named windows of a job in seconds and joules.

    Args:
        readers: the job's power readers (one per device kind); at least one.
        clock: monotonic seconds; tests pass a counter.
        fallback: the estimate used, with a single warning, for any reader that fails.
            Defaults to this process's CPU time x ``DEFAULT_CPU_WATTS_PER_CORE``.

    Windows can nest and overlap; each key is open at most once.
    """

    def __init__(
        self,
        readers: Sequence[EnergyReader],
        clock: Clock = time.monotonic,
        fallback: Callable[[], EnergyReader] | None = None,
    ) -> None:
        if not readers:
            raise SpecError("EnergyMeter needs at least one reader; use for_this_process()")
        self._readers: list[EnergyReader] = list(readers)
        self._clock = clock
        self._fallback = fallback or (lambda: CpuTimeReader(DEFAULT_CPU_WATTS_PER_CORE))
        self._windows: dict[str, _Window] = {}
        self._notes: list[str] = [n for r in readers if (n := getattr(r, "note", None))]

    @classmethod
    def for_this_process(
        cls,
        catalog: Any = None,
        instance: str = "local-cpu",
        gpu_indices: Sequence[int] | None = None,
        clock: Clock = time.monotonic,
    ) -> EnergyMeter:
        """The best readers this machine offers for this process: NVML for its GPUs, RAPL
        for its CPU share, else an estimate from its CPU time x the catalog's watts per core.

        Args:
            catalog: a ``kilowatt.catalog`` catalog (loaded if None) for watts per core.
            instance: the catalog instance whose CPU power figure is used.
            gpu_indices: this job's GPUs (default: ``CUDA_VISIBLE_DEVICES`` or all).
            clock: monotonic seconds.
        """
        watts_per_core = cpu_watts_per_core(catalog, instance)
        readers: list[EnergyReader] = []
        for make in (lambda: NvmlReader(gpu_indices, clock=clock), RaplReader):
            try:
                readers.append(make())
            except MeterUnavailable:
                continue  # absent hardware is normal; the CPU estimate covers it
        if not any(r.method == "measured-rapl" for r in readers):
            readers.append(CpuTimeReader(watts_per_core))
        return cls(readers, clock=clock, fallback=lambda: CpuTimeReader(watts_per_core))

    @property
    def readers(self) -> tuple[EnergyReader, ...]:
        """The readers in use (after any fallbacks)."""
        return tuple(self._readers)

    def begin_window(self, key: str) -> None:
        """Open window ``key``; raises ``SpecError`` if it is already open."""
        if key in self._windows:
            raise SpecError(f"measurement window {key!r} is already open; end it first")
        self._windows[key] = _Window(self._clock(), self._read_all())

    def end_window(self, key: str) -> Measurement:
        """Close window ``key`` and return what it cost."""
        if key not in self._windows:
            raise SpecError(f"measurement window {key!r} was never begun; call begin_window")
        end_j = self._read_all()  # may rebase open windows if a reader fails now
        window = self._windows.pop(key)
        duration_s = self._clock() - window.start_s
        pairs = zip(self._readers, window.start_j, end_j, strict=True)
        by_reader = {r.name: end - start for r, start, end in pairs}
        methods = list(dict.fromkeys(r.method for r in self._readers))
        return Measurement(
            duration_s=duration_s,
            energy_j=sum(by_reader.values()),
            method="+".join(methods),
            energy_by_reader_j=by_reader,
            notes=tuple(self._notes),
        )

    def energy_j(self) -> float:
        """The summed counter of every reader now (joules since each reader started)."""
        return sum(self._read_all())

    def _read_all(self) -> list[float]:
        values = []
        for index in range(len(self._readers)):
            values.append(self._read_one(index))
        return values

    def _read_one(self, index: int) -> float:
        reader = self._readers[index]
        try:
            return reader.energy_j()
        except MeterUnavailable as exc:
            replacement = self._fallback()
            warnings.warn(
                f"{reader.name} reader failed ({exc}); its energy is now estimated "
                f"({replacement.method})",
                MeterWarning,
                stacklevel=3,
            )
            self._notes.append(f"{reader.name} failed; replaced by {replacement.method}")
            self._readers[index] = replacement
            # Windows already open keep their start; the new counter starts near zero,
            # so rebase them on the replacement rather than report a negative delta.
            start = replacement.energy_j()
            for window in self._windows.values():
                window.start_j[index] = start
            return start


def cpu_watts_per_core(catalog: Any, instance: str) -> float:
    """Watts per busy core for ``instance``: the catalog's per-core CPU figure (``tdp_w`` of
    a ``cpu`` accelerator), else the instance's host power / vCPUs, else the default.
    """
    if catalog is None:
        try:
            from kilowatt.catalog import load_catalog

            catalog = load_catalog()
        except KilowattError:  # a broken catalog must not stop a job; the default is marked
            return DEFAULT_CPU_WATTS_PER_CORE
    try:
        entry = catalog.instance(instance)
        accelerator = catalog.accelerator(entry.accelerator)
    except (KilowattError, AttributeError):
        return DEFAULT_CPU_WATTS_PER_CORE
    if accelerator.kind == "cpu":
        return float(accelerator.tdp_w)
    return float(entry.host_power) / float(entry.vcpus)
