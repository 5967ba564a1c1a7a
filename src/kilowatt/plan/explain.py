"""Words for numbers: bottleneck verdicts and the explanation under a plan."""

from __future__ import annotations

from kilowatt.plan.memory import MEMORY_USABLE_FRACTION
from kilowatt.plan.training import Candidate, Finished
from kilowatt.units import j_to_kwh

__all__ = ["describe_train", "duration", "figure", "money", "train_verdict"]


def figure(value: float) -> str:
    """Thousands separators for large figures, three significant digits for small ones."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def duration(seconds: float) -> str:
    """``"3.2 days"``, ``"5.1 h"``, ``"12 min"`` or ``"40 s"``."""
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.2g} s"


def money(usd: float) -> str:
    """``"$12,345"`` or ``"$0.42"``."""
    return f"${usd:,.0f}" if usd >= 100 else f"${usd:,.2f}"


def train_verdict(candidate: Candidate) -> tuple[str, str]:
    """(bottleneck, sentence) for a training configuration, in roofline terms."""
    step = candidate.step
    comm = (step.tensor_comm_s + step.data_comm_s) / step.total_s
    fill = candidate.memory_total_bytes / (candidate.device.memory_bytes * MEMORY_USABLE_FRACTION)
    if comm >= 0.25:
        return "network", (
            f"network-bound: {comm:.0%} of each step waits on communication that the "
            f"backward pass cannot hide; faster links or fewer, larger accelerators help"
        )
    if candidate.memory_bound:
        return "memory-bandwidth", (
            "memory-bandwidth-bound: the matmuls are too small (too little arithmetic per "
            "byte) to reach peak FLOP/s; a larger micro-batch or sequence raises intensity"
        )
    squeezed = candidate.recompute == "full" or candidate.layout.zero == 3
    if squeezed and fill >= 0.8:
        return "capacity", (
            f"capacity-bound: memory is the binding limit ({fill:.0%} of usable memory even "
            f"with {candidate.recompute} recompute and ZeRO-{candidate.layout.zero}); "
            f"accelerators with more memory avoid the recomputation and sharding cost"
        )
    bubble = step.bubble_s / step.total_s
    tail = f", pipeline bubble {bubble:.0%}" if bubble >= 0.01 else ""
    width = (
        f", {candidate.gemm_share:.0%} of it at this matmul width"
        if candidate.gemm_share < 0.995
        else ""
    )
    return "compute", (
        f"compute-bound: {step.busy_fraction:.0%} of each step is arithmetic at "
        f"{candidate.mfu:.0%} of {candidate.precision} peak ({candidate.mfu_source}{width}); "
        f"communication adds {comm:.0%}{tail}"
    )


def describe_train(f: Finished, pricing: str) -> str:
    """One sentence: what to rent, how long, what it costs and emits."""
    c = f.candidate
    lay = c.layout
    layout = f"DP{lay.dp} x TP{lay.tp} x PP{lay.pp}, ZeRO-{lay.zero}, {c.recompute} recompute"
    return (
        f"{c.accelerators} x {c.device.accelerator.name} on {c.nodes} x {c.device.instance.name} "
        f"({_where(c.device.instance.cloud, f.region.name)}; {layout}): {duration(f.time_s)}, "
        f"{money(f.cost_usd)} {pricing.replace('_', '-')} incl. storage and egress, "
        f"{figure(j_to_kwh(f.energy_j))} kWh, "
        f"{figure(f.carbon_gco2e / 1000)} kg CO2e"
    )


def _where(cloud: str, region: str) -> str:
    return region if cloud == region else f"{cloud} {region}"
