"""Model variants measured in joules within an accuracy budget, and serving-configuration
tuning.

    >>> from kilowatt.optimize import OptimizeOptions, load_eval, optimize
    >>> report = optimize(module, load_eval("pkg.evals:digits"), Path("out"))  # doctest: +SKIP

Promotion gates are policy the store enforces (``kilowatt.store.gates``); this package
produces the figures they judge.
"""

from kilowatt.optimize.candidates import TRANSFORMS, NotApplicable, TransformContext, Variant
from kilowatt.optimize.distill import Distillation
from kilowatt.optimize.evaluation import (
    EvalSet,
    accuracy,
    check_eval_fits,
    load_eval,
    register_eval_source,
)
from kilowatt.optimize.measure import Effort, Figures, measure_file
from kilowatt.optimize.optimizer import (
    OBJECTIVES,
    Candidate,
    OptimizeOptions,
    OptimizeReport,
    optimize,
    pareto_front,
)
from kilowatt.optimize.prune import FineTune

__all__ = [
    "OBJECTIVES",
    "TRANSFORMS",
    "Candidate",
    "Distillation",
    "Effort",
    "EvalSet",
    "Figures",
    "FineTune",
    "NotApplicable",
    "OptimizeOptions",
    "OptimizeReport",
    "TransformContext",
    "Variant",
    "accuracy",
    "check_eval_fits",
    "load_eval",
    "measure_file",
    "optimize",
    "pareto_front",
    "register_eval_source",
]
