"""Planner speed: how long `kilowatt plan` takes to search the catalog, and how many
configurations it costs.

Measured in the same run:

- kilowatt: ``kilowatt.make_plan(spec)``, which costs every configuration on plain
  dataclasses and builds result models only for the plans it shows;
- baseline: the same enumeration, but every feasible configuration is materialised as a
  ``TrainOption`` result model before ranking (the straightforward implementation).

Workloads: the shipped 2B example (cloud GPUs only), the same 2B model over the whole
catalog (no allow-list), and the 70B fine-tune. Target: well under 1 s for the 2B example.

Usage: python bench/plan_speed.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "plan_speed.json"
EXAMPLES = ROOT / "examples" / "plans"
TARGET_S = 1.0


def _specs() -> dict[str, Any]:
    from kilowatt.spec import load_spec
    from kilowatt.spec.plan import PlanSpec

    shipped = load_spec(PlanSpec, EXAMPLES / "2b-transformer.yaml")
    whole = shipped.model_copy(
        update={"constraints": shipped.constraints.model_copy(update={"accelerators": []})}
    )
    return {
        "2b example (cloud GPUs)": shipped,
        "2b over whole catalog": whole,
        "70b fine-tune": load_spec(PlanSpec, EXAMPLES / "70b-finetune.yaml"),
    }


def run_kilowatt(spec: Any, catalog: Any, calibration: Any) -> tuple[float, int]:
    from kilowatt.plan import make_plan

    start = time.perf_counter()
    result = make_plan(spec, catalog=catalog, calibration=calibration)
    return time.perf_counter() - start, result.configurations_evaluated


def run_baseline(spec: Any, catalog: Any, calibration: Any) -> tuple[float, int]:
    from kilowatt.plan import search
    from kilowatt.plan.common import Rejections, mfu_lookup, objective_key
    from kilowatt.plan.training import TrainContext, evaluate, finish, layouts

    start = time.perf_counter()
    ctx = TrainContext.of(spec, mfu_lookup(spec, calibration))
    options, evaluated = [], 0
    for device, regions, nodes in search._fleets(spec, catalog, Rejections()):
        for layout in layouts(device, nodes, ctx):
            evaluated += len(regions)
            outcome = evaluate(device, nodes, layout, ctx)
            if isinstance(outcome, str):
                continue
            for done in finish(outcome, regions, ctx):
                if search._violation(done, spec) is None:
                    options.append(search._option(done, ctx.steps))
    options.sort(key=objective_key(spec.objective))
    return time.perf_counter() - start, evaluated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from kilowatt.catalog import load_catalog
    from kilowatt.plan import Calibration

    catalog, calibration = load_catalog(), Calibration()
    rows = []
    for name, spec in _specs().items():
        run_kilowatt(spec, catalog, calibration)  # warm imports and caches
        ours = [run_kilowatt(spec, catalog, calibration) for _ in range(args.repeats)]
        base = [run_baseline(spec, catalog, calibration) for _ in range(args.repeats)]
        ours_s = statistics.median(t for t, _ in ours)
        base_s = statistics.median(t for t, _ in base)
        configs = ours[0][1]
        rows.append(
            {
                "workload": name,
                "configurations": configs,
                "kilowatt_s": ours_s,
                "baseline_s": base_s,
                "speedup": base_s / ours_s,
                "us_per_configuration": ours_s / configs * 1e6,
                "fraction_of_target": ours_s / TARGET_S,
            }
        )
    header = (
        f"{'workload':26} {'configs':>8} {'kilowatt s':>11} {'baseline s':>11} "
        f"{'speed-up':>9} {'us/config':>10} {'vs 1 s target':>14}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['workload']:26} {r['configurations']:>8} {r['kilowatt_s']:>11.3f} "
            f"{r['baseline_s']:>11.3f} {r['speedup']:>8.1f}x {r['us_per_configuration']:>10.1f} "
            f"{r['fraction_of_target']:>13.2f}x"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "benchmark": "plan_speed",
                "repeats": args.repeats,
                "python": platform.python_version(),
                "machine": platform.machine(),
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
