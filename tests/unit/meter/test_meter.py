"""Meter arithmetic on fake counters, recorded NVML samples and a fake RAPL tree."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from kilowatt.errors import MeterUnavailable, SpecError
from kilowatt.meter import (
    Accountant,
    CounterReader,
    CpuTimeReader,
    EnergyMeter,
    Measurement,
    MeterWarning,
    NvmlReader,
    PowerSampler,
    RaplReader,
    TdpReader,
)


def _steps(start: float, step: float):
    counter = itertools.count(start, step)
    return lambda: next(counter)


def test_window_reports_exact_seconds_and_joules_from_stepping_counters() -> None:
    meter = EnergyMeter([CounterReader(_steps(1000.0, 50.0))], clock=_steps(10.0, 0.5))
    meter.begin_window("a")  # clock 10.0, energy 1000
    meter.begin_window("b")  # clock 10.5, energy 1050
    b = meter.end_window("b")  # clock 11.0, energy 1100
    a = meter.end_window("a")  # clock 11.5, energy 1150
    assert (b.duration_s, b.energy_j) == (pytest.approx(0.5), pytest.approx(50.0))
    assert (a.duration_s, a.energy_j) == (pytest.approx(1.5), pytest.approx(150.0))
    assert a.method == "measured-nvml"
    assert a.power_w == pytest.approx(100.0)


def test_two_readers_sum_and_join_their_methods() -> None:
    gpu = CounterReader(_steps(0.0, 300.0), method="measured-nvml", name="nvml")
    cpu = CounterReader(_steps(0.0, 20.0), method="estimated-cpu-time", name="cpu-time")
    meter = EnergyMeter([gpu, cpu], clock=_steps(0.0, 1.0))
    meter.begin_window("step")
    m = meter.end_window("step")
    assert m.energy_j == pytest.approx(320.0)
    assert m.method == "measured-nvml+estimated-cpu-time"
    assert m.energy_by_reader_j == {"nvml": 300.0, "cpu-time": 20.0}


def test_window_misuse_names_the_key() -> None:
    meter = EnergyMeter([CounterReader(_steps(0.0, 1.0))], clock=_steps(0.0, 1.0))
    with pytest.raises(SpecError, match="'x' was never begun"):
        meter.end_window("x")
    meter.begin_window("x")
    with pytest.raises(SpecError, match="'x' is already open"):
        meter.begin_window("x")


class _BrokenAfter:
    """Reads normally ``good_reads`` times, then the device disappears."""

    name = "nvml"
    method = "measured-nvml"

    def __init__(self, good_reads: int) -> None:
        self._left = good_reads

    def energy_j(self) -> float:
        if self._left == 0:
            raise MeterUnavailable("GPU is lost")
        self._left -= 1
        return 500.0


def test_failing_reader_warns_once_and_falls_back_to_a_marked_estimate() -> None:
    estimate = CounterReader(_steps(0.0, 7.0), method="estimated-cpu-time", name="cpu-time")
    meter = EnergyMeter([_BrokenAfter(1)], clock=_steps(0.0, 1.0), fallback=lambda: estimate)
    meter.begin_window("w")  # good read: 500
    with pytest.warns(MeterWarning, match="nvml reader failed .*GPU is lost.*estimated-cpu-time"):
        m = meter.end_window("w")  # fails; fallback starts at 0 and the window is rebased
    assert m.method == "estimated-cpu-time"
    assert m.energy_j == pytest.approx(0.0)
    assert any("replaced by estimated-cpu-time" in note for note in m.notes)
    meter.begin_window("w2")  # 7
    m2 = meter.end_window("w2")  # 14, no second warning (warnings are errors here)
    assert m2.energy_j == pytest.approx(7.0)


def test_cpu_time_estimate_is_cpu_seconds_times_watts_per_core() -> None:
    reader = CpuTimeReader(watts_per_core=12.5, cpu_s=_steps(100.0, 4.0))
    assert reader.energy_j() == pytest.approx(50.0)  # 4 CPU-s after the start reading
    assert reader.energy_j() == pytest.approx(100.0)
    with pytest.raises(ValueError, match="watts_per_core must be > 0"):
        CpuTimeReader(watts_per_core=0.0)


def test_tdp_estimate_is_power_times_elapsed_time() -> None:
    reader = TdpReader(power_w=300.0, clock=_steps(5.0, 2.0))
    assert reader.energy_j() == pytest.approx(600.0)
    assert reader.method == "estimated-tdp"


# --- NVML: a replay of samples recorded from an A100 (energy counter) and a T4-class
# device without one (power only), behind the same functions pynvml offers.


class _RecordedNvml:
    """Camel-case names are pynvml's own."""

    def __init__(self, energy_mj: dict[int, list[int]], power_mw: dict[int, list[int]]) -> None:
        self._energy = {i: iter(v) for i, v in energy_mj.items()}
        self._power = {i: iter(v) for i, v in power_mw.items()}
        self.count = max([*energy_mj, *power_mw]) + 1

    def nvmlInit(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return self.count

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:
        if handle not in self._energy:
            raise RuntimeError("NVMLError_NotSupported")
        return next(self._energy[handle])

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        return next(self._power[handle])

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(gpu=87, memory=40)


def test_nvml_energy_counter_is_read_in_millijoules_for_the_jobs_devices_only() -> None:
    # GPU 0 belongs to another job; this job owns GPU 1. The probe read, the start read,
    # then two window reads.
    nvml = _RecordedNvml(
        energy_mj={0: [0, 0, 10**9, 10**9], 1: [5_000_000, 5_000_000, 5_060_000, 5_310_500]},
        power_mw={},
    )
    reader = NvmlReader([1], nvml=nvml)
    meter = EnergyMeter([reader], clock=_steps(0.0, 1.0))
    meter.begin_window("step")
    m = meter.end_window("step")
    assert m.energy_j == pytest.approx(250.5)  # (5_310_500 - 5_060_000) mJ
    assert m.method == "measured-nvml"


def test_nvml_power_samples_are_integrated_by_the_trapezoid_rule() -> None:
    # 100 W at t=0, 200 W at t=1, 300 W at t=3 -> 150 J + 500 J
    nvml = _RecordedNvml(energy_mj={}, power_mw={0: [100_000, 200_000, 300_000]})
    reader = NvmlReader(nvml=nvml, clock=iter([0.0, 1.0, 3.0]).__next__)
    assert reader.energy_j() == pytest.approx(150.0)
    assert reader.energy_j() == pytest.approx(650.0)


def test_nvml_rejects_missing_devices_and_missing_driver() -> None:
    nvml = _RecordedNvml(energy_mj={0: [0]}, power_mw={})
    with pytest.raises(MeterUnavailable, match=r"GPU indices \[3\] not present; NVML sees 1"):
        NvmlReader([3], nvml=nvml)

    class NoDriver(_RecordedNvml):
        def nvmlInit(self) -> None:
            raise RuntimeError("NVMLError_DriverNotLoaded")

    with pytest.raises(MeterUnavailable, match="is the NVIDIA driver loaded"):
        NvmlReader(nvml=NoDriver({0: [0]}, {}))


# --- RAPL on a fake powercap tree


def _rapl_tree(root: Path, energy_uj: int, max_uj: int = 1_000_000) -> Path:
    zone = root / "intel-rapl:0"
    zone.mkdir(parents=True, exist_ok=True)
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{max_uj}\n")
    sub = root / "intel-rapl:0:0"  # a sub-zone (cores) must not be double counted
    sub.mkdir(exist_ok=True)
    (sub / "energy_uj").write_text("123\n")
    return zone


def test_rapl_scales_package_energy_by_this_process_cpu_share_and_handles_wrap(
    tmp_path: Path,
) -> None:
    zone = _rapl_tree(tmp_path, energy_uj=900_000)
    process = iter([0.0, 1.0])  # this process used 1 CPU-s ...
    host = iter([0.0, 4.0])  # ... of 4 busy CPU-s on the host
    reader = RaplReader(tmp_path, process_cpu=process.__next__, host_cpu=host.__next__)
    (zone / "energy_uj").write_text("100000\n")  # wrapped: 900_000 -> 1_000_000 -> 100_000
    assert reader.energy_j() == pytest.approx(0.2 * 0.25)  # 200_000 uJ x 1/4
    assert "share" in reader.note


def test_rapl_unreadable_or_absent_raises_meter_unavailable(tmp_path: Path) -> None:
    with pytest.raises(MeterUnavailable, match="no RAPL package counters"):
        RaplReader(tmp_path)
    zone = _rapl_tree(tmp_path, energy_uj=0)
    (zone / "energy_uj").write_text("not a number")
    with pytest.raises(MeterUnavailable, match="cannot read RAPL counter"):
        RaplReader(tmp_path)


def test_for_this_process_falls_back_to_a_cpu_time_estimate_without_devices() -> None:
    catalog = SimpleNamespace(
        instance=lambda name: SimpleNamespace(accelerator="cpu"),
        accelerator=lambda name: SimpleNamespace(kind="cpu", tdp_w=9.0),
    )
    meter = EnergyMeter.for_this_process(catalog=catalog)
    methods = {r.method for r in meter.readers}
    # This host may have readable RAPL; otherwise the estimate must be there, never nothing.
    assert methods & {"measured-rapl", "estimated-cpu-time"}
    estimates = [r for r in meter.readers if isinstance(r, CpuTimeReader)]
    assert all(r.watts_per_core == 9.0 for r in estimates)


# --- accountant


def test_accountant_prices_time_and_converts_energy_to_carbon() -> None:
    acct = Accountant(
        price_usd_per_hour=2.0, grid_intensity_gco2e_per_kwh=300.0, pue=1.2, instance_share=0.5
    )
    bill = acct.account(Measurement(duration_s=5400.0, energy_j=7.2e6, method="measured-nvml"))
    assert bill.cost_usd == pytest.approx(1.5)  # 1.5 h x $2/h x half the instance
    assert bill.carbon_gco2e == pytest.approx(720.0)  # 2 kWh x 1.2 x 300 g/kWh
    assert bill.energy_method == "measured-nvml"
    assert bill.carbon_method.startswith("measured-nvml")
    assert bill.cost_method == "given-price"


def test_accountant_from_a_catalog_uses_the_instance_price_and_region_intensity() -> None:
    catalog = SimpleNamespace(
        instance=lambda name: SimpleNamespace(price_usd_per_hour=4.0),
        region=lambda name: SimpleNamespace(grid_intensity_gco2e_per_kwh=50.0, pue=1.1),
    )
    acct = Accountant.from_catalog(catalog, instance="gpu-box", region="nordic")
    bill = acct.account(Measurement(duration_s=900.0, energy_j=3.6e6, method="estimated-tdp"))
    assert bill.cost_usd == pytest.approx(1.0)
    assert bill.carbon_gco2e == pytest.approx(55.0)
    assert bill.cost_method == "catalog-price:gpu-box"
    assert "catalog-region:nordic" in bill.carbon_method


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"price_usd_per_hour": -1.0}, "price_usd_per_hour must be >= 0.0, got -1.0"),
        ({"pue": 0.9}, "pue must be >= 1.0, got 0.9"),  # a PUE below 1 is physically impossible
        ({"instance_share": 0.0}, r"instance_share must be in \(0, 1\], got 0.0"),
    ],
)
def test_accountant_rejects_bad_numbers(kwargs: dict[str, float], message: str) -> None:
    args = {"price_usd_per_hour": 1.0, "grid_intensity_gco2e_per_kwh": 100.0, **kwargs}
    with pytest.raises(SpecError, match=message):
        Accountant(**args)


def test_sampler_tick_reports_average_power_between_ticks() -> None:
    meter = EnergyMeter([CounterReader(_steps(0.0, 40.0))], clock=_steps(0.0, 1.0))
    sampler = PowerSampler(meter, interval_s=0.5, clock=_steps(0.0, 2.0))
    assert sampler.tick() is None  # the first tick only sets the origin
    sample = sampler.tick()
    assert sample is not None
    assert sample.power_w == pytest.approx(20.0)  # 40 J over 2 s
    assert sampler.latest_power_w() == pytest.approx(20.0)


def test_sampler_thread_collects_samples_until_stopped() -> None:
    meter = EnergyMeter([CounterReader(_steps(0.0, 1.0))])
    sampler = PowerSampler(meter, interval_s=0.01)
    with sampler:
        deadline = time.monotonic() + 60.0
        while len(sampler.samples) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    count = len(sampler.samples)
    assert count >= 2
    assert all(s.power_w > 0 for s in sampler.samples)
    time.sleep(0.05)
    assert len(sampler.samples) == count  # stopped: no more ticks
