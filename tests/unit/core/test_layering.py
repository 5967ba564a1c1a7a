"""The dependency direction of DESIGN.md, kept true by walking every import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[3] / "src" / "kilowatt"

# package -> kilowatt packages it may import (besides itself). Top-level modules count as
# packages of their own name.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "units": set(),
    "spec": {"errors"},
    "catalog": {"errors", "spec", "units"},
    "plan": {"errors", "spec", "units", "catalog"},
    "meter": {"errors", "spec", "units", "catalog"},
    "data": {"errors", "spec", "units"},
    "store": {"errors", "spec", "units"},
    "train": {"errors", "spec", "units", "meter", "data"},
    "serve": {"errors", "spec", "units", "meter"},
    "bench": {"errors", "spec", "units", "plan", "meter", "serve"},
    "backends": {"errors", "spec", "units", "train", "serve", "meter", "store", "data"},
    "api": {"errors", "spec", "units", "catalog", "plan", "meter", "store", "backends"},
    "ops": {"errors", "spec", "units", "catalog", "store"},
}


def _package_of(path: Path) -> str:
    relative = path.relative_to(SRC)
    return relative.parts[0].removesuffix(".py")


def _kilowatt_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "kilowatt" and len(parts) > 1:
                found.add(parts[1])
    return found


def _violations() -> list[str]:
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        if path.parent == SRC and path.name == "__init__.py":
            continue  # the lazy public API re-exports from every layer
        package = _package_of(path)
        if package not in ALLOWED:
            continue  # cli may import anything
        for imported in _kilowatt_imports(path) - ALLOWED[package] - {package}:
            problems.append(f"{path.relative_to(SRC)} imports kilowatt.{imported}")
    return problems


def test_every_package_imports_only_what_its_layer_allows() -> None:
    assert _violations() == []


def test_nothing_imports_the_cli() -> None:
    offenders = [
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        if _package_of(path) != "cli" and "cli" in _kilowatt_imports(path)
    ]
    assert offenders == []


@pytest.mark.parametrize(
    "module", ["kilowatt", "kilowatt.spec", "kilowatt.catalog", "kilowatt.plan"]
)
def test_light_modules_import_without_torch(module: str) -> None:
    code = f"import sys, {module}; print('torch' in sys.modules, 'sqlalchemy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
