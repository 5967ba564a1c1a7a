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
    "signals": set(),
    "host": set(),
    "ports": {"errors"},
    "spec": {"errors"},
    "catalog": {"errors", "spec", "units"},
    "plan": {"errors", "spec", "units", "catalog"},
    "meter": {"errors", "spec", "units", "catalog"},
    "data": {"errors", "spec", "units"},
    "store": {"errors", "spec", "units"},
    "train": {"errors", "spec", "units", "signals", "meter", "data"},
    "serve": {"errors", "spec", "units", "signals", "host", "ports", "meter"},
    "bench": {"errors", "spec", "units", "plan", "meter", "serve"},
    "backends": {
        "errors",
        "spec",
        "units",
        "signals",
        "host",
        "ports",
        "train",
        "serve",
        "meter",
        "store",
        "data",
    },
    "api": {"errors", "spec", "units", "ports", "catalog", "plan", "meter", "store", "backends"},
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


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(path: Path, modules: set[str]) -> set[str]:
    """Modules of kilowatt that ``path`` imports when it runs, at the top or in a function
    (imports under ``if TYPE_CHECKING:`` never run, so they cannot close a cycle)."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for statement in node.body
        for inner in ast.walk(statement)
    }
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            module = ".".join([*base, node.module or ""]) if node.level else node.module or ""
            # ``from kilowatt.serve import routes`` imports the module kilowatt.serve.routes
            found |= {f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module
                      for a in node.names}  # fmt: skip
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return (found & modules) - {name}


def _cycles_within_packages() -> list[list[str]]:
    paths = {
        _module_name(path): path
        for path in SRC.rglob("*.py")
        if "migrations" not in path.parts  # Alembic's scripts, never imported by kilowatt
    }
    graph = {name: _runtime_imports(path, set(paths)) for name, path in paths.items()}
    top = {name: ".".join(name.split(".")[:2]) for name in graph}
    cycles = []
    for start in sorted(graph):  # a depth-first walk from each module back to itself
        stack = [(start, [start])]
        while stack:
            node, trail = stack.pop()
            for nxt in sorted(graph[node]):
                if top[nxt] != top[start]:
                    continue
                if nxt == start and min(trail) == start:  # each cycle once
                    cycles.append(trail)
                elif nxt not in trail and nxt > start:
                    stack.append((nxt, [*trail, nxt]))
    return cycles


def test_no_package_has_an_import_cycle() -> None:
    # A cycle makes import order matter and hides which module owns a helper: move the
    # helper to the module that uses it, or to a leaf module both import.
    assert _cycles_within_packages() == []
