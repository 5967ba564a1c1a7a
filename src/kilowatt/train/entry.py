"""Turning a ``TrainSpec``'s ``module:function`` entry points into a ``Trainer``.

Each entry point is imported and its signature checked against what the loop will call,
so a typo or a wrong signature fails at once with a ``SpecError`` naming the key, the
value and the expected signature, not after the first step.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from kilowatt.errors import SpecError
from kilowatt.meter import Accountant, EnergyMeter
from kilowatt.spec import Settings, TrainSpec
from kilowatt.train.callbacks import Callback
from kilowatt.train.trainer import Trainer

__all__ = ["SIGNATURES", "build_trainer", "resolve_entry_point"]

#: spec key -> (parameter names the loop passes, what it must return)
SIGNATURES: dict[str, tuple[tuple[str, ...], str]] = {
    "model": ((), "torch.nn.Module"),
    "optimizer": (("model",), "torch.optim.Optimizer"),
    "dataset": ((), "a map-style Dataset"),
    "eval_dataset": ((), "a map-style Dataset"),
    "dataloader": (("batch_size", "rank", "world_size"), "an iterable of batches"),
    "loss": (("outputs", "targets"), "a scalar loss tensor"),
    "training_step": (("model", "batch"), "a scalar loss tensor"),
    "scheduler": (("optimizer",), "an LR scheduler"),
}


def resolve_entry_point(key: str, value: str) -> Callable[..., Any]:
    """Import ``value`` (``module:function``) and check it accepts what ``key`` is given.

    The current directory is importable, as with ``python -m``, so a spec can name the
    user's own modules next to it.

    Raises:
        SpecError: the module or attribute is missing, not callable, or has the wrong
            signature.
    """
    module_name, _, attribute = value.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise SpecError(
            f"{key}: cannot import module {module_name!r} ({exc}); check the name and that "
            "it is importable from the current directory or PYTHONPATH"
        ) from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise SpecError(f"{key}: module {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise SpecError(f"{key}: {value} is a {type(target).__name__}, not a function")
    _check_signature(key, value, target)
    return target


def _check_signature(key: str, value: str, function: Callable[..., Any]) -> None:
    names, returns = SIGNATURES[key]
    expected = f"({', '.join(names)}) -> {returns}"
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return  # builtins without a signature: trust them
    try:
        signature.bind(*names)
    except TypeError as exc:
        raise SpecError(
            f"{key}: {value}{signature} cannot be called as {key}{expected} ({exc}); "
            "change its parameters to match"
        ) from None


def build_trainer(
    spec: TrainSpec,
    callbacks: Sequence[Callback] = (),
    accountant: Accountant | None = None,
    meter: Callable[[], EnergyMeter] | None = EnergyMeter.for_this_process,
    train_data: Any = None,
    **overrides: Any,
) -> Trainer:
    """A ``Trainer`` for ``spec``: entry points resolved and checked, options passed on.

    Args:
        spec: the validated spec.
        callbacks: e.g. the store-backed recorder.
        accountant: prices energy and time (the CLI builds it from the catalog).
        meter: the meter factory for each rank.
        train_data: a data source the caller built (e.g. a filtered ``kilowatt.data.Loader``),
            read instead of the spec's.
        overrides: option fields to replace (e.g. ``resume="never"``, ``steps=3``).
    """
    entry = {
        key: resolve_entry_point(key, value)
        for key in SIGNATURES
        if (value := getattr(spec, key)) is not None
    }
    if train_data is None and spec.data is not None:
        from kilowatt.data import loader_from_spec

        train_data = loader_from_spec(spec.data, Settings.from_env())
    elif train_data is None:
        train_data = entry["dataloader"] if "dataloader" in entry else entry["dataset"]()
    eval_data = entry["eval_dataset"]() if "eval_dataset" in entry else None
    return Trainer(
        entry["model"],
        entry.get("optimizer"),
        train_data=train_data,
        loss_fn=entry.get("loss"),
        training_step=entry.get("training_step"),
        scheduler=entry.get("scheduler"),
        eval_data=eval_data,
        options=spec.options(),
        callbacks=callbacks,
        name=spec.name,
        meter=meter,
        accountant=accountant,
        **overrides,
    )
