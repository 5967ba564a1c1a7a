"""What one accelerator of an instance offers the planner.

A GPU, TPU or ASIC instance offers ``accelerator_count`` devices. A CPU-only instance is
one device: its cores together (the ``cpu`` catalog entry describes one core) with the
instance's RAM as device memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from kilowatt.catalog import Accelerator, Catalog, Instance

__all__ = ["Device"]


@dataclass(frozen=True)
class Device:
    """One schedulable accelerator of ``instance``, in SI units."""

    instance: Instance
    accelerator: Accelerator
    per_node: int
    cores: int
    memory_bytes: float
    bandwidth_bytes_per_s: float
    tdp_w: float
    idle_w: float
    intra_bytes_per_s: float

    @classmethod
    def of(cls, instance: Instance, catalog: Catalog) -> Device:
        acc = catalog.accelerator(instance.accelerator)
        if acc.kind == "cpu":
            cores = instance.accelerator_count
            return cls(
                instance=instance,
                accelerator=acc,
                per_node=1,
                cores=cores,
                memory_bytes=instance.memory_gib * 2**30,
                bandwidth_bytes_per_s=acc.memory_bandwidth_bytes_per_s * cores,
                tdp_w=acc.tdp_w * cores,
                idle_w=acc.idle_power_w * cores,
                intra_bytes_per_s=acc.interconnect_bytes_per_s,
            )
        return cls(
            instance=instance,
            accelerator=acc,
            per_node=instance.accelerator_count,
            cores=1,
            memory_bytes=acc.memory_bytes,
            bandwidth_bytes_per_s=acc.memory_bandwidth_bytes_per_s,
            tdp_w=acc.tdp_w,
            idle_w=acc.idle_power_w,
            intra_bytes_per_s=acc.interconnect_bytes_per_s,
        )

    def peak_flops(self, precision: str) -> float:
        """Dense peak FLOP/s of the device (all cores for a CPU)."""
        return self.accelerator.peak_flops(precision) * self.cores
