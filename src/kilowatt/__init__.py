"""kilowatt: plan, train, serve and meter AI workloads in seconds, joules, dollars and grams CO2e.

The public API is small and loaded lazily, so ``import kilowatt`` costs nothing:

    >>> import kilowatt
    >>> result = kilowatt.make_plan("examples/plans/2b-transformer.yaml")  # doctest: +SKIP
    >>> with kilowatt.start_run(project="demo") as run:  # doctest: +SKIP
    ...     run.log_metrics({"loss": 0.1}, step=1)

The functions are named by what they do (``make_plan``, ``run_server``), never by a
subpackage: importing ``kilowatt.plan`` binds the module ``kilowatt.plan``, and a function of
the same name would be shadowed by it.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it; imported on first use.
_PUBLIC = {
    "make_plan": "kilowatt.plan",
    "start_run": "kilowatt.store",
    "register_model": "kilowatt.store",
    "lineage": "kilowatt.store",
    "Trainer": "kilowatt.train",
    "run_server": "kilowatt.serve",
    "KilowattError": "kilowatt.errors",
}

__all__ = [*sorted(_PUBLIC), "__version__"]

if TYPE_CHECKING:  # for type checkers and IDEs; the runtime path is __getattr__
    from kilowatt.errors import KilowattError as KilowattError
    from kilowatt.plan import make_plan as make_plan
    from kilowatt.serve import run_server as run_server
    from kilowatt.store import lineage as lineage
    from kilowatt.store import register_model as register_model
    from kilowatt.store import start_run as start_run
    from kilowatt.train import Trainer as Trainer


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'kilowatt' has no attribute {name!r}")
    return getattr(import_module(module), name)
