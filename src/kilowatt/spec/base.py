"""The base of every spec model, and loading specs from YAML with errors that help."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from kilowatt.errors import SpecError

__all__ = ["Spec", "format_validation_error", "load_spec", "read_yaml"]

SpecT = TypeVar("SpecT", bound=BaseModel)


class Spec(BaseModel):
    """A frozen spec model: unknown keys are errors, never silently ignored."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def format_validation_error(error: ValidationError, source: str) -> str:
    """One line per problem: where it is, what was given, what is expected."""
    lines = [f"{source}: invalid spec ({error.error_count()} problem(s)):"]
    for problem in error.errors():
        where = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        message = problem["msg"]
        if problem["type"] == "extra_forbidden":
            message = "unknown key; remove it or check its spelling"
        given = problem.get("input")
        shown = "" if isinstance(given, dict) else f" (got {given!r})"
        lines.append(f"  - {where}: {message}{shown}")
    return "\n".join(lines)


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file, turning I/O and syntax errors into ``SpecError``."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file; check the path") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from None


def load_spec(model: type[SpecT], source: str | Path | dict[str, Any]) -> SpecT:
    """Validate a spec given as a YAML path or a mapping.

    >>> from kilowatt.spec import TrainSpec  # doctest: +SKIP
    >>> spec = load_spec(TrainSpec, "examples/train.yaml")  # doctest: +SKIP
    """
    if isinstance(source, dict):
        data, name = source, model.__name__
    else:
        data, name = read_yaml(source), str(source)
    if not isinstance(data, dict):
        raise SpecError(f"{name}: expected a mapping of keys to values at the top level")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, name)) from None
