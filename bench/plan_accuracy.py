"""Planner accuracy: published training runs predicted with leave-one-out defaults, and the
continuous-batching serving simulation against published vLLM runs.

Baselines in the same run:

- training: the compute-only estimate (``6·N·D`` plus attention at one fixed MFU, the
  planner's previous model with its A100-fitted 0.42) for every run;
- serving: the static-batch estimate (``kilowatt.plan.inference``) of the same replica.

Sources are in ``src/kilowatt/catalog/data/published_runs.yaml`` and
``tests/unit/plan/test_llm_serving.py``. The figures are deterministic (no repeats needed).

Usage: python bench/plan_accuracy.py
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "plan_accuracy.json"
OLD_MFU = 0.42  # the single default the compute-only model used before the fit


def training_rows() -> list[dict[str, object]]:
    from kilowatt.catalog import load_catalog, load_published_runs
    from kilowatt.plan.compute import training_flops
    from kilowatt.plan.fit import validate
    from kilowatt.spec.plan import TrainingWorkload

    catalog = load_catalog()
    rows = []
    for row in validate(catalog, load_published_runs()):
        run = row.run
        flops = training_flops(run.model, TrainingWorkload(tokens=run.tokens))
        peak = catalog.accelerator(run.accelerator).peak_flops(run.precision)
        baseline_h = flops / (peak * OLD_MFU) / 3600
        rows.append(
            {
                "run": run.name,
                "accelerators": run.count,
                "count_published": run.count_published,
                "accelerator": run.accelerator,
                "precision": run.precision,
                "published_h": run.accelerator_hours,
                "baseline_error": baseline_h / run.accelerator_hours - 1,
                "default_error": row.catalog_default.error,
                "loo_error": row.leave_one_out.error,
            }
        )
    return rows


def serving_rows() -> list[dict[str, object]]:
    sys.path.insert(0, str(ROOT / "tests" / "unit" / "plan"))
    from test_llm_serving import PUBLISHED, _engine

    from kilowatt.plan.llm_serving import Request, simulate

    rows = []
    for model, part, prompts, outputs, tpot_ms, ttft_ms, tokens_s, results in PUBLISHED:
        engine = _engine(model, part)
        requests = [Request(0.0, p, o) for p, o in zip(prompts, outputs, strict=True)]
        got = simulate(engine, requests)
        batch = len(requests)
        static_tpot_s = (engine.weight_bytes + 0) / engine.bytes_per_s  # one weight read
        rows.append(
            {
                "pair": f"{results.split('/')[1].split('_')[0]} on {part}",
                "tpot_ms": tpot_ms,
                "sim_tpot_ms": got.tpot_s.p50 * 1e3,
                "static_tpot_ms": static_tpot_s * 1e3,
                "ttft_ms": ttft_ms,
                "sim_ttft_ms": got.ttft_s.p50 * 1e3,
                "tokens_per_s": tokens_s,
                "sim_tokens_per_s": got.output_tokens_per_s,
                "requests": batch,
                "source": f"LambdaLabsML/vllm-benchmark results/prompt_10/{results}",
            }
        )
    return rows


def main() -> None:
    train = training_rows()
    print("| run | accelerators | published h | compute-only @0.42 | catalog defaults | "
          "leave-one-out |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|")
    for r in train:
        star = "" if r["count_published"] else "*"
        print(
            f"| {r['run']} | {r['accelerators']}{star} {r['accelerator']} {r['precision']} | "
            f"{r['published_h']:,.0f} | {r['baseline_error']:+.0%} | {r['default_error']:+.0%} "
            f"| {r['loo_error']:+.0%} |"
        )
    for key, label in (("baseline_error", "compute-only"), ("loo_error", "leave-one-out")):
        errors = [abs(float(r[key])) for r in train]  # type: ignore[arg-type]
        within = sum(e <= 0.25 for e in errors) / len(errors)
        print(f"{label}: {within:.0%} within ±25%, median |error| {statistics.median(errors):.1%}")
    serve = serving_rows()
    print("\n| model on GPU | TPOT ms published / sim / static | TTFT ms published / sim | "
          "output tok/s published / sim |")  # fmt: skip
    print("|---|---|---|---|")
    for r in serve:
        print(
            f"| {r['pair']} | {r['tpot_ms']:.2f} / {r['sim_tpot_ms']:.2f} / "
            f"{r['static_tpot_ms']:.2f} | {r['ttft_ms']:.1f} / {r['sim_ttft_ms']:.1f} | "
            f"{r['tokens_per_s']:.0f} / {r['sim_tokens_per_s']:.0f} |"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"training": train, "serving": serve}, indent=2))
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
