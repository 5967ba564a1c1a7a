"""The planner's prediction for one concrete workload on one device, for comparing
against a measured run (the trainer and the quickstart print both)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from kilowatt.catalog import Accelerator, Catalog, Region, load_catalog
from kilowatt.errors import SpecError
from kilowatt.plan.calibration import Calibration
from kilowatt.plan.energy import accelerator_power_w
from kilowatt.plan.time import gemm_efficiency
from kilowatt.units import SECONDS_PER_HOUR, carbon_gco2e

__all__ = ["Prediction", "predict_training"]


class Prediction(BaseModel):
    """Predicted time, energy (facility, incl. PUE), cost and carbon of a workload."""

    model_config = ConfigDict(frozen=True)

    time_s: float
    energy_j: float
    cost_usd: float
    carbon_gco2e: float
    mfu: float
    mfu_source: str
    """``argument``, ``calibration`` or ``catalog default``."""
    power_w: float
    method: str = "planned"


def predict_training(
    flops_total: float,
    accelerator: Accelerator | str,
    count: int = 1,
    mfu: float | None = None,
    *,
    precision: str = "bf16",
    region: Region | str = "local",
    price_usd_per_hour: float = 0.0,
    model_class: str = "transformer",
    calibration: Calibration | None = None,
    catalog: Catalog | None = None,
    gemm_width: float | None = None,
) -> Prediction:
    """Predict a training run of ``flops_total`` model FLOPs on ``count`` accelerators.

    Compute-bound estimate: ``time = flops / (count · peak · mfu)``; power is the
    accelerators' busy draw (the host is not included); energy includes the region's PUE.
    For ``accelerator="cpu"``, ``count`` is the number of cores.

    Args:
        flops_total: model FLOPs of the whole run (e.g. 6·N·D, or 3 x forward x samples).
        accelerator: catalog entry or name (``"cpu"`` for this machine's cores).
        count: accelerators (or CPU cores) used.
        mfu: achieved fraction of peak; default: calibration, then the catalog default.
        precision: compute precision (falls back to what the part supports).
        region: where it runs (grid intensity and PUE); ``"local"`` by default.
        price_usd_per_hour: price of the ``count`` accelerators together.
        model_class: calibration key (``"transformer"``, ``"cnn"``, ...).
        calibration: measured MFUs (default: none).
        catalog: catalog to resolve names in (default: the built-in catalog).
        gemm_width: narrowest side of the model's main matrix multiplies (its hidden size
            over the tensor-parallel degree); catalog defaults are wide-matrix figures, so
            give it for a transformer (see ``kilowatt.plan.time.gemm_efficiency``).

    >>> p = predict_training(1e15, "cpu", count=8, mfu=0.25)
    >>> round(p.time_s)  # 1e15 / (8 x 0.1e12 x 0.25)
    5000
    """
    if flops_total < 0 or count < 1:
        raise SpecError(f"need flops_total >= 0 and count >= 1, got {flops_total!r}, {count!r}")
    if isinstance(accelerator, str) or isinstance(region, str):
        catalog = catalog or load_catalog()
    part = catalog.accelerator(accelerator) if isinstance(accelerator, str) else accelerator  # type: ignore[union-attr]
    where = catalog.region(region) if isinstance(region, str) else region  # type: ignore[union-attr]
    source = "argument"
    if mfu is None:
        measured = calibration.mfu(part.name, model_class) if calibration else None
        mfu, source = (
            (measured, "calibration")
            if measured
            else (part.default_mfu(precision), "catalog default")
        )
    width_share = 1.0 if gemm_width is None else gemm_efficiency(gemm_width)
    time_s = flops_total / (count * part.peak_flops(precision) * mfu * width_share)
    power_w = count * accelerator_power_w(part.tdp_w, part.idle_power_w, 1.0)
    it_energy_j = power_w * time_s
    return Prediction(
        time_s=time_s,
        energy_j=it_energy_j * where.pue,
        cost_usd=price_usd_per_hour * time_s / SECONDS_PER_HOUR,
        carbon_gco2e=carbon_gco2e(it_energy_j, where.grid_intensity_gco2e_per_kwh, where.pue),
        mfu=mfu,
        mfu_source=source,
        power_w=power_w,
    )
