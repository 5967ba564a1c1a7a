"""A background thread sampling power and utilisation into a time series.

It also keeps counters that need frequent reads honest: RAPL counters wrap, and NVML power
samples are integrated, so both are read at every tick. One tick costs a few file or
NVML reads; at the default 0.5 s interval that is far below 1% of a core.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

from kilowatt.meter.energy import EnergyMeter
from kilowatt.meter.readers import Clock, process_cpu_s

__all__ = ["PowerSample", "PowerSampler"]


@dataclass(frozen=True)
class PowerSample:
    """One tick: when, the job's average power since the last tick, and its CPU use.

    Attributes:
        time_s: the clock reading of the tick (monotonic seconds).
        power_w: average watts over the interval since the previous tick.
        cpu_utilisation: this process's busy cores over that interval (1.0 = one core).
    """

    time_s: float
    power_w: float
    cpu_utilisation: float


class PowerSampler:
    """Samples ``meter`` every ``interval_s`` seconds in a daemon thread.

    Use as a context manager or call ``start``/``stop``. The series keeps the last
    ``max_samples`` ticks.

    >>> sampler = PowerSampler(EnergyMeter.for_this_process(), interval_s=0.5)  # doctest: +SKIP
    >>> with sampler:  # doctest: +SKIP
    ...     train()
    >>> sampler.samples[-1].power_w  # doctest: +SKIP
    """

    def __init__(
        self,
        meter: EnergyMeter,
        interval_s: float = 0.5,
        clock: Clock = time.monotonic,
        max_samples: int = 10_000,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0 seconds, got {interval_s}")
        self.meter = meter
        self.interval_s = interval_s
        self._clock = clock
        self._samples: deque[PowerSample] = deque(maxlen=max_samples)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: tuple[float, float, float] | None = None
        self._lock = threading.Lock()

    @property
    def samples(self) -> list[PowerSample]:
        """The ticks so far, oldest first."""
        with self._lock:
            return list(self._samples)

    def latest_power_w(self) -> float | None:
        """The most recent power figure, or None before the first interval ends."""
        with self._lock:
            return self._samples[-1].power_w if self._samples else None

    def tick(self) -> PowerSample | None:
        """Take one sample now (the thread calls this; tests call it directly)."""
        now = (self._clock(), self.meter.energy_j(), process_cpu_s(include_children=False))
        with self._lock:
            previous, self._last = self._last, now
            if previous is None:
                return None
            elapsed_s = now[0] - previous[0]
            if elapsed_s <= 0:
                return None
            sample = PowerSample(
                time_s=now[0],
                power_w=(now[1] - previous[1]) / elapsed_s,
                cpu_utilisation=(now[2] - previous[2]) / elapsed_s,
            )
            self._samples.append(sample)
            return sample

    def start(self) -> PowerSampler:
        """Start the thread (idempotent)."""
        if self._thread is None:
            self._stop.clear()
            self.tick()
            self._thread = threading.Thread(target=self._run, name="kilowatt-sampler", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and wait for it."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def __enter__(self) -> PowerSampler:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.tick()
