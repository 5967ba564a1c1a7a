"""Build every applicable variant, measure each, keep those within the accuracy budget,
find the Pareto front and choose by the objective.

>>> report = optimize(module, load_eval("mypkg.evals:digits"), Path("out"))  # doctest: +SKIP
>>> report.chosen.name  # doctest: +SKIP
'onnx-int8-static'
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from kilowatt.errors import SpecError
from kilowatt.host import available_cores
from kilowatt.optimize.candidates import (
    BASELINE,
    TRANSFORMS,
    NotApplicable,
    TransformContext,
    Variant,
    quiet_torch_warnings,
)
from kilowatt.optimize.distill import Distillation, distillation
from kilowatt.optimize.evaluation import EvalSet, check_eval_fits
from kilowatt.optimize.measure import Effort, Figures, measure_file
from kilowatt.optimize.prune import FineTune, magnitude_pruning, structured_pruning

__all__ = [
    "OBJECTIVES",
    "Candidate",
    "OptimizeOptions",
    "OptimizeReport",
    "optimize",
    "pareto_front",
]

Objective = Literal["energy", "latency", "throughput", "cost"]
OBJECTIVES: tuple[str, ...] = ("energy", "latency", "throughput", "cost")


@dataclass(frozen=True)
class OptimizeOptions:
    """What to try and how to choose.

    Attributes:
        max_metric_drop: the accuracy budget: how much worse than fp32 the metric may be
            (absolute: 0.005 is half a percentage point of accuracy).
        slo_p99_s: batch-1 p99 latency a kept variant must meet (None: no bound).
        objective: what the choice minimises among kept variants: joules per 1,000
            inferences, p99 latency, 1/throughput, or dollars per 1,000 inferences.
        threads: intra-op thread counts each variant is measured at.
        transforms: names from ``TRANSFORMS`` (and pruning) to try; None tries all.
        effort: measuring time per variant.
        finetune: the training spec's data, loss and optimizer (enables the pruning and
            distillation variants).
        distill: the distillation's student, temperature and step bound.
        usd_per_s: machine price per second (the ``cost`` objective's time term).
        usd_per_j: energy price per joule (its energy term).
        factory: ``module:function`` that rebuilds the eager module (lets the fp32 row be
            measured eager; otherwise it is measured as a TorchScript trace).
    """

    max_metric_drop: float = 0.005
    slo_p99_s: float | None = None
    objective: Objective = "energy"
    threads: tuple[int, ...] = ()
    transforms: tuple[str, ...] | None = None
    effort: Effort = field(default_factory=Effort)
    finetune: FineTune | None = None
    distill: Distillation = field(default_factory=Distillation)
    usd_per_s: float = 0.0
    usd_per_j: float = 0.0
    factory: str | None = None


@dataclass
class Candidate:
    """One row of the variant table: a variant at a thread count, measured or skipped."""

    name: str
    transform: str
    parameters: dict[str, Any]
    threads: int | None
    status: Literal["measured", "skipped"]
    reason: str = ""
    runtime: str = ""
    metric: float | None = None
    metric_drop: float | None = None
    bytes_on_disk: int | None = None
    figures: Figures | None = None
    within_budget: bool = False
    pareto: bool = False
    chosen: bool = False
    path: str | None = None
    serve_hints: dict[str, str] = field(default_factory=dict)
    version: str | None = None  # the model version it was registered as

    @property
    def label(self) -> str:
        """``name`` with its thread count (``onnx-int8-static x1``)."""
        return self.name if self.threads is None else f"{self.name} x{self.threads}"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (figures flattened in)."""
        raw = asdict(self)
        raw.update(raw.pop("figures") or {})
        raw["label"] = self.label
        return raw


@dataclass
class OptimizeReport:
    """Every candidate, the choice and how the figures were obtained."""

    candidates: list[Candidate]
    metric_name: str
    higher_is_better: bool
    objective: str
    max_metric_drop: float
    slo_p99_s: float | None
    notes: list[str] = field(default_factory=list)

    @property
    def measured(self) -> list[Candidate]:
        return [c for c in self.candidates if c.status == "measured"]

    @property
    def chosen(self) -> Candidate | None:
        return next((c for c in self.candidates if c.chosen), None)

    @property
    def baseline(self) -> Candidate | None:
        """The fp32 row at the most threads: what savings are stated against."""
        rows = [c for c in self.measured if c.name == BASELINE]
        return max(rows, key=lambda c: c.threads or 0) if rows else None

    @property
    def kept(self) -> list[Candidate]:
        """Within the budget and on the Pareto front: what gets registered."""
        return [c for c in self.measured if c.within_budget and c.pareto]

    def as_dict(self) -> dict[str, Any]:
        return {
            "metric_name": self.metric_name,
            "higher_is_better": self.higher_is_better,
            "objective": self.objective,
            "max_metric_drop": self.max_metric_drop,
            "slo_p99_s": self.slo_p99_s,
            "notes": self.notes,
            "chosen": self.chosen.label if self.chosen else None,
            "baseline": self.baseline.label if self.baseline else None,
            "candidates": [c.as_dict() for c in self.candidates],
        }


def _all_transforms(
    distill: Distillation,
) -> dict[str, Callable[[TransformContext, FineTune | None], Variant]]:
    table: dict[str, Callable[[TransformContext, FineTune | None], Variant]] = {
        name: (lambda ctx, _ft, make=make: make(ctx)) for name, make in TRANSFORMS.items()
    }
    table["pruned-l1"] = magnitude_pruning(0.5)
    table["pruned-channels"] = structured_pruning(0.25)
    table["distilled"] = distillation(distill)
    return table


def _default_threads() -> tuple[int, ...]:
    return tuple(sorted({1, available_cores()}))


def optimize(
    module: Any,
    eval_set: EvalSet,
    workdir: Path,
    options: OptimizeOptions = OptimizeOptions(),
    progress: Callable[[str], None] = lambda _: None,
) -> OptimizeReport:
    """Try every applicable transform on ``module``, measure each, and choose.

    Raises:
        SpecError: the eval does not fit the model's outputs (before any variant is built),
            an unknown transform or objective was asked for, or the cost objective without
            a price.
    """
    table = _all_transforms(options.distill)
    wanted = options.transforms or tuple(table)
    unknown = [name for name in wanted if name not in table]
    if unknown or options.objective not in OBJECTIVES:
        raise SpecError(
            f"unknown transform(s) {unknown} or objective {options.objective!r}; transforms: "
            f"{', '.join(table)}; objectives: {', '.join(OBJECTIVES)}"
        )
    if options.objective == "cost" and options.usd_per_s <= 0 and options.usd_per_j <= 0:
        raise SpecError(
            "the cost objective needs a price, or every variant costs 0: set usd_per_s (the "
            "machine's price per second) or usd_per_j (energy's price per joule) above 0"
        )
    inputs = np.ascontiguousarray(eval_set.inputs)
    check_eval_fits(eval_set, _first_output(module, inputs))
    workdir.mkdir(parents=True, exist_ok=True)
    inputs_file = workdir / "eval-inputs.npy"
    np.save(inputs_file, inputs)
    ctx = TransformContext(
        module, inputs[:8], eval_set.calibration_batch(), workdir, factory=options.factory,
        eval_inputs=inputs,
    )  # fmt: skip
    candidates: list[Candidate] = []
    for name in (BASELINE, *[n for n in wanted if n != BASELINE]):
        progress(f"building {name}")
        candidates += _build_and_measure(
            name, table[name], ctx, options, eval_set, inputs_file, progress
        )
    report = OptimizeReport(
        candidates, eval_set.metric_name, eval_set.higher_is_better, options.objective,
        options.max_metric_drop, options.slo_p99_s,
    )  # fmt: skip
    _judge(report, options)
    methods = sorted({c.figures.energy_method for c in report.measured if c.figures})
    report.notes.append(f"energy method: {', '.join(methods) or 'none'}")
    return report


def _first_output(module: Any, inputs: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return np.asarray(module(torch.from_numpy(inputs[:1])).detach().numpy())


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    reason = first if isinstance(exc, NotApplicable) else f"{type(exc).__name__}: {first}"
    return reason[:300]


def _build_and_measure(
    name: str,
    make: Callable[[TransformContext, FineTune | None], Variant],
    ctx: TransformContext,
    options: OptimizeOptions,
    eval_set: EvalSet,
    inputs_file: Path,
    progress: Callable[[str], None],
) -> list[Candidate]:
    try:
        with quiet_torch_warnings():
            variant = make(ctx, options.finetune)
            path = ctx.workdir / f"{variant.name}{variant.suffix}"
            variant.save(path)
    except Exception as exc:
        return [Candidate(name, "", {}, None, "skipped", reason=_reason(exc))]
    rows = []
    for threads in options.threads or _default_threads():
        progress(f"measuring {variant.name} x{threads}")
        row = Candidate(
            variant.name, variant.transform, variant.parameters, threads, "measured",
            runtime=variant.runtime, bytes_on_disk=path.stat().st_size, path=str(path),
            serve_hints=variant.serve_hints,
        )  # fmt: skip
        try:
            row.figures, outputs = measure_file(
                path, threads, inputs_file, options.effort, variant.serve_hints
            )
            row.metric = eval_set.score(outputs)
        except Exception as exc:
            row.status, row.reason = "skipped", _reason(exc)
        rows.append(row)
    return rows


def _objective_value(candidate: Candidate, options: OptimizeOptions) -> float:
    figures = candidate.figures
    assert figures is not None
    if options.objective == "latency":
        return figures.latency_p99_s
    if options.objective == "throughput":
        return -figures.throughput_per_s
    if options.objective == "cost":
        seconds_per_1000 = 1000.0 / figures.throughput_per_s
        return seconds_per_1000 * options.usd_per_s + figures.energy_per_1000_j * options.usd_per_j
    return figures.energy_per_1000_j


def _judge(report: OptimizeReport, options: OptimizeOptions) -> None:
    """Set each row's metric drop, budget verdict, Pareto flag, and the choice."""
    baseline = report.baseline
    measured = report.measured
    if baseline is None or baseline.metric is None:
        report.notes.append("the fp32 model could not be measured: nothing to compare with")
        return
    sign = 1.0 if report.higher_is_better else -1.0
    for row in measured:
        assert row.metric is not None and row.figures is not None
        row.metric_drop = sign * (baseline.metric - row.metric)
        fast_enough = options.slo_p99_s is None or row.figures.latency_p99_s <= options.slo_p99_s
        # A tiny tolerance: the same model measured twice must not fall out of its budget.
        row.within_budget = row.metric_drop <= options.max_metric_drop + 1e-9 and fast_enough
    for row in pareto_front(measured, report.higher_is_better):
        row.pareto = True
    kept = [row for row in measured if row.within_budget]
    if kept:
        min(kept, key=lambda row: _objective_value(row, options)).chosen = True
    else:
        report.notes.append("no variant met the budget and the SLO; nothing was chosen")


def pareto_front(rows: Sequence[Candidate], higher_is_better: bool = True) -> list[Candidate]:
    """Rows no other row beats on all of: metric, joules per 1,000 inferences, p99 latency.

    >>> from kilowatt.optimize.measure import Figures
    >>> def row(name, metric, joules, p99):
    ...     figures = Figures(0, p99, p99, 1.0, 1, joules, joules, "m")
    ...     return Candidate(name, "", {}, 1, "measured", metric=metric, figures=figures)
    >>> [r.name for r in pareto_front([row("a", 0.9, 5, 1), row("b", 0.9, 4, 1),
    ...                                row("c", 0.8, 1, 1)])]
    ['b', 'c']
    """

    def key(row: Candidate) -> tuple[float, float, float]:
        assert row.metric is not None and row.figures is not None
        metric = row.metric if higher_is_better else -row.metric
        return (-metric, row.figures.energy_per_1000_j, row.figures.latency_p99_s)

    keys = {id(row): key(row) for row in rows}

    def dominated(row: Candidate) -> bool:
        mine = keys[id(row)]
        return any(
            all(o <= m for o, m in zip(other, mine, strict=True)) and other != mine
            for other in (keys[id(r)] for r in rows if r is not row)
        )

    return [row for row in rows if not dominated(row)]
