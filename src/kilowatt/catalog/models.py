"""Catalog entries: accelerators, instances and regions, with their units in field names.

Every entry carries ``source`` (where the figure comes from) and ``as_of`` (when it was
read), because prices, carbon intensities and even peak FLOP/s figures change.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import Field, model_validator

from kilowatt.spec import Spec

__all__ = [
    "FP8_TO_BF16_THROUGHPUT",
    "PRECISIONS",
    "Accelerator",
    "AcceleratorKind",
    "Instance",
    "Precision",
    "PurchaseOption",
    "Region",
]

Precision = Literal["fp32", "tf32", "bf16", "fp16", "fp8", "int8"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "tf32", "bf16", "fp16", "fp8", "int8")
AcceleratorKind = Literal["gpu", "tpu", "asic", "cpu"]

# Achieved fp8 over bf16 throughput per GPU at scale on H100: 390 TFLOP/s in fp8 for Llama 4
# Behemoth on 32K GPUs (https://ai.meta.com/blog/llama-4-multimodal-intelligence/, 2025)
# against 400 TFLOP/s in bf16 for Llama 3 405B on 16K GPUs (arXiv:2407.21783, table 4).
# fp8 peaks are twice bf16's, so a part without its own fp8 figure reaches
# mfu_default x FP8_TO_BF16_THROUGHPUT / 2 of its fp8 peak.
FP8_TO_BF16_THROUGHPUT = 390.0 / 400.0

# When a part lacks the requested format, the work runs in the next one it has: fp8 falls
# back to 16-bit, 16-bit formats stand in for each other, and everything ends at fp32.
_FALLBACK: dict[str, tuple[str, ...]] = {
    "fp8": ("fp8", "bf16", "fp16", "tf32", "fp32"),
    "int8": ("int8", "fp8", "bf16", "fp16", "fp32"),
    "bf16": ("bf16", "fp16", "tf32", "fp32"),
    "fp16": ("fp16", "bf16", "tf32", "fp32"),
    "tf32": ("tf32", "fp32"),
    "fp32": ("fp32",),
}


class Accelerator(Spec):
    """One accelerator part (or, for ``kind: cpu``, one CPU core).

    Figures are dense (no structured sparsity) peak rates from the vendor datasheet.

    Attributes:
        name: catalog key, e.g. ``a100-80gb``.
        vendor: ``nvidia``, ``amd``, ``google``, ``intel``, ``aws`` or ``generic``.
        kind: ``gpu``, ``tpu``, ``asic`` or ``cpu`` (a ``cpu`` entry describes ONE core).
        memory_gib: device memory (per core for ``cpu``; CPU instances use their own RAM).
        memory_bandwidth_gb_per_s: device memory bandwidth in 1e9 bytes/s.
        peak_tflops: dense peak by precision in 1e12 FLOP/s (int8 in 1e12 OP/s).
        tdp_w: board power limit in watts (per core for ``cpu``).
        idle_w: power drawn when idle, watts.
        interconnect: name of the intra-node link (``nvlink4``, ``pcie4``, ``ici``, ...).
        interconnect_gb_per_s: per-accelerator intra-node bandwidth, 1e9 bytes/s, both ways.
        mfu_default: fraction of bf16/fp16 peak a well-tuned training job sustains.
        mfu_by_precision: achieved fraction of the peak of other formats where it differs
            (fp8 runs keep attention, norms and communication in 16 bits, so its fraction
            of the fp8 peak is lower than bf16's of the bf16 peak).
        family: parts sharing a compute die and software stack (``a100`` for both A100
            memory sizes); the planner's efficiency defaults are fitted per family.
        trains: whether the part is used for training (inference-only parts say false).
        source: where the figures come from.
        as_of: date the figures were read.
    """

    name: str = Field(min_length=1)
    vendor: str
    kind: AcceleratorKind
    memory_gib: float = Field(gt=0)
    memory_bandwidth_gb_per_s: float = Field(gt=0)
    peak_tflops: dict[Precision, float]
    tdp_w: float = Field(gt=0)
    idle_w: float | None = Field(default=None, ge=0)
    interconnect: str
    interconnect_gb_per_s: float = Field(gt=0)
    mfu_default: float = Field(default=0.4, gt=0, le=1)
    mfu_by_precision: dict[Precision, float] = Field(default_factory=dict)
    family: str | None = None
    trains: bool = True
    source: str = Field(min_length=1)
    as_of: dt.date

    @model_validator(mode="after")
    def _check_peaks(self) -> Accelerator:
        if "fp32" not in self.peak_tflops:
            raise ValueError("peak_tflops needs at least an fp32 figure")
        bad = {k: v for k, v in self.peak_tflops.items() if v <= 0}
        if bad:
            raise ValueError(f"peak_tflops must be > 0, got {bad}")
        return self

    @property
    def fit_family(self) -> str:
        """The family whose published runs set this part's defaults (itself if none)."""
        return self.family or self.name

    @property
    def memory_bytes(self) -> float:
        """Device memory in bytes."""
        return self.memory_gib * 2**30

    @property
    def memory_bandwidth_bytes_per_s(self) -> float:
        """Device memory bandwidth in bytes/s."""
        return self.memory_bandwidth_gb_per_s * 1e9

    @property
    def interconnect_bytes_per_s(self) -> float:
        """Intra-node bandwidth per accelerator in bytes/s (both directions)."""
        return self.interconnect_gb_per_s * 1e9

    @property
    def idle_power_w(self) -> float:
        """Idle draw: the catalog figure, else a quarter of TDP (typical of datacenter GPUs)."""
        return self.idle_w if self.idle_w is not None else 0.25 * self.tdp_w

    def compute_precision(self, precision: str) -> str:
        """The format the part actually runs ``precision`` in (see the fallback chain)."""
        for candidate in _FALLBACK[precision]:
            if candidate in self.peak_tflops:
                return candidate
        return "fp32"

    def default_mfu(self, precision: str) -> float:
        """Achieved fraction of ``precision``'s peak (the format the part runs it in).

        >>> from kilowatt.catalog import load_catalog
        >>> h100 = load_catalog().accelerator("h100-sxm")
        >>> h100.default_mfu("fp8") < h100.default_mfu("bf16")
        True
        """
        runs_in = self.compute_precision(precision)
        if runs_in in self.mfu_by_precision:
            return self.mfu_by_precision[runs_in]  # type: ignore[index]
        if runs_in in ("fp8", "int8"):
            return self.mfu_default * FP8_TO_BF16_THROUGHPUT / 2.0
        return self.mfu_default

    def mfu_basis(self, precision: str) -> str:
        """Where ``default_mfu(precision)`` comes from, for a plan's explanation."""
        runs_in = self.compute_precision(precision)
        if "mfu_default" not in self.model_fields_set and runs_in not in self.mfu_by_precision:
            return (
                f"assumed {self.default_mfu(precision):.0%} of peak for {self.name}, whose "
                "catalog entry gives no mfu_default; measure it with `kilowatt profile` or set one"
            )
        if runs_in in ("fp8", "int8") and runs_in not in self.mfu_by_precision:
            return "catalog default; fp8 from bf16 by the published fp8/bf16 throughput ratio"
        return "catalog default"

    def peak_flops(self, precision: str) -> float:
        """Dense peak FLOP/s for ``precision``, falling back to the next format the part has.

        >>> from kilowatt.catalog import load_catalog
        >>> load_catalog().accelerator("a100-80gb").peak_flops("bf16")
        312000000000000.0
        """
        return self.peak_tflops[self.compute_precision(precision)] * 1e12  # type: ignore[index]


class Instance(Spec):
    """A machine you can rent (or own): accelerators, host, network and price.

    Attributes:
        name: instance type, e.g. ``p4d.24xlarge``.
        cloud: ``aws``, ``gcp``, ``azure`` or ``local``.
        regions: regions where ``price_usd_per_hour`` applies (first is the priced one).
        accelerator: catalog name of its accelerator (``cpu`` for CPU-only machines).
        accelerator_count: accelerators per instance (physical cores for CPU-only machines).
        vcpus: virtual CPUs.
        memory_gib: host memory.
        network_gbps: instance network bandwidth, 1e9 bits/s.
        price_usd_per_hour: on-demand price.
        spot_discount: typical fraction off on-demand for spot/preemptible capacity.
        commit_1y_discount: fraction off on-demand with a one-year commitment.
        spot_interruptions_per_hour: expected spot preemptions per instance-hour (estimate).
        host_power_w: CPU, memory, NIC and fans at load, watts (default 150 + 5 per vCPU).
        source: where the figures come from.
        as_of: date the figures were read.
    """

    name: str = Field(min_length=1)
    cloud: str
    regions: list[str] = Field(min_length=1)
    accelerator: str
    accelerator_count: int = Field(gt=0)
    vcpus: int = Field(gt=0)
    memory_gib: float = Field(gt=0)
    network_gbps: float = Field(gt=0)
    price_usd_per_hour: float = Field(ge=0)
    spot_discount: float | None = Field(default=None, ge=0, lt=1)
    commit_1y_discount: float | None = Field(default=None, ge=0, lt=1)
    spot_interruptions_per_hour: float = Field(default=0.02, ge=0)
    host_power_w: float | None = Field(default=None, ge=0)
    source: str = Field(min_length=1)
    as_of: dt.date

    @property
    def region(self) -> str:
        """The region the price was read in."""
        return self.regions[0]

    @property
    def network_bytes_per_s(self) -> float:
        """Instance network bandwidth in bytes/s."""
        return self.network_gbps * 1e9 / 8

    @property
    def host_power(self) -> float:
        """Host power at load in watts (catalog figure, else 150 W + 5 W per vCPU)."""
        return self.host_power_w if self.host_power_w is not None else 150.0 + 5.0 * self.vcpus


class Region(Spec):
    """A place that draws power from a grid: carbon intensity, PUE and storage prices.

    Attributes:
        name: region name as the cloud spells it (``us-east-1``, ``europe-west4``, ``local``).
        cloud: owning cloud (``local`` for this machine).
        location: human-readable place.
        grid_intensity_gco2e_per_kwh: average grid carbon intensity, gCO2e per kWh.
        pue: power usage effectiveness (facility energy / IT energy); default from the catalog.
        storage_usd_per_gb_month: object storage price, USD per 1e9 bytes per month.
        egress_usd_per_gb: internet egress price, USD per 1e9 bytes.
        source: where the figures come from.
        as_of: date the figures were read.
    """

    name: str = Field(min_length=1)
    cloud: str
    location: str
    grid_intensity_gco2e_per_kwh: float = Field(ge=0)
    pue: float = Field(default=0.0, description="0 means: use the catalog default_pue")
    storage_usd_per_gb_month: float = Field(default=0.023, ge=0)
    egress_usd_per_gb: float = Field(default=0.09, ge=0)
    source: str = Field(min_length=1)
    as_of: dt.date

    @model_validator(mode="after")
    def _check_pue(self) -> Region:
        if self.pue != 0.0 and self.pue < 1.0:
            raise ValueError(f"pue must be >= 1.0 (facility / IT energy), got {self.pue}")
        return self


class PurchaseOption(Spec):
    """A system you can buy outright, for comparing ownership against renting.

    Attributes:
        name: catalog key, e.g. ``dgx-a100``.
        accelerator: catalog name of its accelerator.
        accelerator_count: accelerators in the system.
        price_usd: purchase price of the system.
        price_is_estimate: true when no list price is published (reseller or press figures).
        power_kw: the system's maximum power draw, kW.
        idle_power_kw: draw when idle, kW (default: a quarter of ``power_kw``).
        source: where the price and power figures come from.
        as_of: date the figures were read.
    """

    name: str = Field(min_length=1)
    accelerator: str
    accelerator_count: int = Field(gt=0)
    price_usd: float = Field(gt=0)
    price_is_estimate: bool = False
    power_kw: float = Field(gt=0)
    idle_power_kw: float | None = Field(default=None, ge=0)
    source: str = Field(min_length=1)
    as_of: dt.date

    @property
    def idle_kw(self) -> float:
        """Idle draw in kW (the catalog figure, else a quarter of the maximum)."""
        return self.idle_power_kw if self.idle_power_kw is not None else 0.25 * self.power_kw
