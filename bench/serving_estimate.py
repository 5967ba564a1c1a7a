"""Serving search: the steady-state continuous-batching estimate against the event simulation.

For a few replicas (plenty of KV cache, and two KV-limited ones) at 30%, 60% and 85% of the
estimated capacity, measured in the same run:

- kilowatt: ``kilowatt.plan.llm_steady.steady_state``, what the search runs per configuration;
- baseline: ``kilowatt.plan.llm_serving.simulate`` with 300 Poisson arrivals, what it replays
  for the three plans it shows (running it per configuration was the alternative).

Prints estimate / simulation for mean inter-token latency and time to first token p50/p99,
the time per call of each (median over repeats, with the spread), and the whole serving
search on the shipped 7B example with the time the simulation would take per configuration.

Usage: python bench/serving_estimate.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "serving_estimate.json"


def _engines() -> dict[str, tuple[object, int, int]]:
    from kilowatt.plan.llm_serving import Engine
    from kilowatt.spec.plan import PlanModel

    gqa = PlanModel(params=7.25e9, layers=32, hidden=4096, heads=32, kv_heads=8, seq_len=4096)
    mha = PlanModel(params=7e9, layers=32, hidden=4096, heads=32, seq_len=4096)

    def engine(model: PlanModel, gib: float, bandwidth: float) -> Engine:
        return Engine.for_model(
            model, memory_bytes=gib * 2**30, bandwidth_bytes_per_s=bandwidth, flops_per_s=150e12
        )

    return {
        "7B GQA, 80 GiB, 512+256": (engine(gqa, 80, 3.35e12), 512, 256),
        "7B MHA, 24 GiB, 512+256": (engine(mha, 24, 2e12), 512, 256),
        "7B MHA, 48 GiB, 2000+200": (engine(mha, 48, 2e12), 2000, 200),
    }


def _timed(call, repeats: int) -> tuple[object, list[float]]:  # type: ignore[no-untyped-def]
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = call()
        times.append(time.perf_counter() - start)
    return value, times


def main() -> None:
    from kilowatt.plan import make_plan
    from kilowatt.plan.llm_serving import poisson_arrivals, simulate
    from kilowatt.plan.llm_steady import capacity_requests_per_s, steady_state

    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows, sim_times, est_times = [], [], []
    for name, (engine, prompt, output) in _engines().items():
        capacity = capacity_requests_per_s(engine, prompt, output)  # type: ignore[arg-type]
        for load in (0.3, 0.6, 0.85):
            rate = load * capacity
            est, t_est = _timed(partial(steady_state, engine, rate, prompt, output), args.repeats)
            arrivals = poisson_arrivals(rate, 300, prompt, output, seed=0)
            sim, t_sim = _timed(partial(simulate, engine, arrivals), 1)
            est_times += t_est
            sim_times += t_sim
            rows.append(
                {
                    "replica": name,
                    "load": load,
                    "itl_ratio": est.iteration_s / sim.tpot_s.p50,  # type: ignore[union-attr]
                    "ttft_p50_ratio": est.ttft_s.p50 / sim.ttft_s.p50,  # type: ignore[union-attr]
                    "ttft_p99_ratio": est.ttft_s.p99 / sim.ttft_s.p99,  # type: ignore[union-attr]
                }
            )
    print(f"{'replica':26} {'load':>5} {'ITL est/sim':>12} {'TTFT p50':>9} {'TTFT p99':>9}")
    for r in rows:
        print(
            f"{r['replica']:26} {r['load']:>5.2f} {r['itl_ratio']:>12.2f} "
            f"{r['ttft_p50_ratio']:>9.2f} {r['ttft_p99_ratio']:>9.2f}"
        )
    est_ms = [t * 1e3 for t in est_times]
    sim_ms = [t * 1e3 for t in sim_times]
    example = ROOT / "examples" / "plans" / "7b-chat-serving.yaml"
    result, t_plan = _timed(partial(make_plan, example), args.repeats)
    configs = result.configurations_evaluated  # type: ignore[attr-defined]
    summary = {
        "estimate_ms_median": statistics.median(est_ms),
        "estimate_ms_range": [min(est_ms), max(est_ms)],
        "simulation_ms_median": statistics.median(sim_ms),
        "simulation_ms_range": [min(sim_ms), max(sim_ms)],
        "serving_search_s_median": statistics.median(t_plan),
        "serving_search_s_range": [min(t_plan), max(t_plan)],
        "configurations": configs,
        "simulating_every_configuration_s": configs * statistics.median(sim_ms) / 1e3,
    }
    print(
        f"per call: estimate {summary['estimate_ms_median']:.2f} ms "
        f"({min(est_ms):.2f}-{max(est_ms):.2f}), simulation "
        f"{summary['simulation_ms_median']:.0f} ms ({min(sim_ms):.0f}-{max(sim_ms):.0f}), "
        f"{summary['simulation_ms_median'] / summary['estimate_ms_median']:.0f}x"
    )
    print(
        f"7b-chat-serving search: {summary['serving_search_s_median']:.2f} s "
        f"({min(t_plan):.2f}-{max(t_plan):.2f}) for {configs} configurations; simulating each "
        f"would take about {summary['simulating_every_configuration_s']:.0f} s"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "benchmark": "serving_estimate",
                "repeats": args.repeats,
                "python": platform.python_version(),
                "rows": rows,
                **summary,
            },
            indent=2,
        )
    )
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
