"""Metering: power readers, named measurement windows, a sampler thread and an accountant.

    >>> from kilowatt.meter import Accountant, EnergyMeter
    >>> meter = EnergyMeter.for_this_process()  # doctest: +SKIP
    >>> meter.begin_window("request")  # doctest: +SKIP
    >>> measurement = meter.end_window("request")  # doctest: +SKIP
    >>> Accountant.from_catalog(instance="local-cpu").account(measurement)  # doctest: +SKIP

Every figure carries its method (``measured-nvml``, ``measured-rapl``,
``estimated-cpu-time``, ``estimated-tdp``, ``planned``); a reader that cannot read warns once
and is replaced by an estimate, never a silent zero.
"""

from kilowatt.meter.accountant import Account, Accountant
from kilowatt.meter.energy import (
    DEFAULT_CPU_WATTS_PER_CORE,
    EnergyMeter,
    Measurement,
    MeterWarning,
    cpu_watts_per_core,
)
from kilowatt.meter.readers import (
    METHODS,
    CounterReader,
    CpuTimeReader,
    EnergyReader,
    NvmlReader,
    RaplReader,
    TdpReader,
    process_cpu_s,
)
from kilowatt.meter.sampler import PowerSample, PowerSampler

__all__ = [
    "DEFAULT_CPU_WATTS_PER_CORE",
    "METHODS",
    "Account",
    "Accountant",
    "CounterReader",
    "CpuTimeReader",
    "EnergyMeter",
    "EnergyReader",
    "Measurement",
    "MeterWarning",
    "NvmlReader",
    "PowerSample",
    "PowerSampler",
    "RaplReader",
    "TdpReader",
    "cpu_watts_per_core",
    "process_cpu_s",
]
