"""Load the catalog: built-in data files, then user files; later entries win by name.

A catalog file is YAML with any of these top-level keys::

    default_pue: 1.56
    accelerators: [ {name: ..., ...}, ... ]
    instances:    [ {name: ..., ...}, ... ]
    regions:      [ {name: ..., ...}, ... ]
    purchases:    [ {name: ..., ...}, ... ]   # systems to buy (buy versus rent)

A bad entry raises ``CatalogError`` naming the file, the entry and the field.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Generic, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from kilowatt.catalog.models import Accelerator, Instance, PurchaseOption, Region
from kilowatt.errors import CatalogError, CatalogLookupError

__all__ = ["BUILTIN_FILES", "DEFAULT_PUE", "Catalog", "load_catalog"]

# Uptime Institute Global Data Center Survey 2023: average annual PUE 1.58 across
# reporting facilities; used for regions that state no PUE of their own.
DEFAULT_PUE = 1.58
BUILTIN_FILES = ("accelerators.yaml", "instances.yaml", "regions.yaml", "purchases.yaml")
_SECTIONS: dict[str, type[BaseModel]] = {
    "accelerators": Accelerator,
    "instances": Instance,
    "regions": Region,
    "purchases": PurchaseOption,
}

# The C loader parses the built-in tables ~10x faster; pure Python where it is missing.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

EntryT = TypeVar("EntryT", Accelerator, Instance, Region, PurchaseOption)


class _Table(Generic[EntryT]):
    """Entries of one kind by name, with lookups that suggest close matches."""

    def __init__(self, kind: str, entries: dict[str, EntryT]) -> None:
        self._kind = kind
        self._entries = entries

    def get(self, name: str) -> EntryT:
        entry = self._entries.get(name) or self._entries.get(name.lower())
        if entry is not None:
            return entry
        key = name.lower()
        # Names that extend what was typed ("h100" -> "h100-sxm") first, then look-alikes.
        close = [n for n in self._entries if n.lower().startswith(key)]
        close += difflib.get_close_matches(key, list(self._entries), n=3, cutoff=0.5)
        close = list(dict.fromkeys(close))[:3]
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise CatalogLookupError(
            f"unknown {self._kind} {name!r}.{hint} "
            f"To fix: run `kilowatt catalog list` for the names, or add an entry with --catalog."
        )

    def values(self) -> list[EntryT]:
        return list(self._entries.values())


class Catalog:
    """Accelerators, instances and regions, looked up by name.

    >>> catalog = load_catalog()
    >>> catalog.accelerator("h100-sxm").memory_gib
    80.0
    >>> catalog.region("local").grid_intensity_gco2e_per_kwh
    480.0
    """

    def __init__(
        self,
        accelerators: dict[str, Accelerator],
        instances: dict[str, Instance],
        regions: dict[str, Region],
        default_pue: float = DEFAULT_PUE,
        purchases: dict[str, PurchaseOption] | None = None,
    ) -> None:
        self.default_pue = default_pue
        filled = {
            name: r if r.pue >= 1.0 else r.model_copy(update={"pue": default_pue})
            for name, r in regions.items()
        }
        self._accelerators = _Table("accelerator", accelerators)
        self._instances = _Table("instance", instances)
        self._regions = _Table("region", filled)
        self._purchases = _Table("purchase option", dict(purchases or {}))
        self._check_references()

    @property
    def accelerators(self) -> list[Accelerator]:
        """All accelerators, in catalog order."""
        return self._accelerators.values()

    @property
    def instances(self) -> list[Instance]:
        """All instances, in catalog order."""
        return self._instances.values()

    @property
    def regions(self) -> list[Region]:
        """All regions, in catalog order."""
        return self._regions.values()

    @property
    def purchases(self) -> list[PurchaseOption]:
        """Systems to buy, in catalog order."""
        return self._purchases.values()

    def purchase(self, name: str) -> PurchaseOption:
        """The purchase option called ``name``; ``CatalogLookupError`` suggests close names."""
        return self._purchases.get(name)

    def accelerator(self, name: str) -> Accelerator:
        """The accelerator called ``name``; ``CatalogLookupError`` suggests close names."""
        return self._accelerators.get(name)

    def instance(self, name: str) -> Instance:
        """The instance type called ``name``; ``CatalogLookupError`` suggests close names."""
        return self._instances.get(name)

    def region(self, name: str) -> Region:
        """The region called ``name``; ``CatalogLookupError`` suggests close names."""
        return self._regions.get(name)

    def _check_references(self) -> None:
        for system in self.purchases:
            try:
                self._accelerators.get(system.accelerator)
            except CatalogLookupError as exc:
                raise CatalogError(f"purchase {system.name!r}, field accelerator: {exc}") from None
        for inst in self.instances:
            refs = [("accelerator", inst.accelerator, self._accelerators)]
            refs += [("regions", region, self._regions) for region in inst.regions]
            for field, ref, table in refs:
                try:
                    table.get(ref)
                except CatalogLookupError as exc:
                    raise CatalogError(f"instance {inst.name!r}, field {field}: {exc}") from None


def load_catalog(extra_files: Sequence[Path] = (), user_dir: Path | None = None) -> Catalog:
    """Load the built-in catalog, then ``*.yaml`` files in ``user_dir``, then ``extra_files``.

    Later entries replace earlier ones with the same name, so a user file can correct a
    price or add a private cluster.

    Args:
        extra_files: catalog files given explicitly (``kilowatt plan --catalog FILE``).
        user_dir: folder of user catalog files (the CLI passes ``KILOWATT_HOME/catalog``).

    Raises:
        CatalogError: a file is missing, not YAML, or an entry is invalid (names file,
            entry and field).
    """
    sections: dict[str, dict[str, Any]] = {key: {} for key in _SECTIONS}
    default_pue = DEFAULT_PUE
    for label, text in _sources(extra_files, user_dir):
        pue = _merge(label, text, sections)
        default_pue = pue if pue is not None else default_pue
    return Catalog(
        sections["accelerators"],
        sections["instances"],
        sections["regions"],
        default_pue,
        purchases=sections["purchases"],
    )


def _sources(extra_files: Sequence[Path], user_dir: Path | None) -> Iterable[tuple[str, str]]:
    data = resources.files("kilowatt.catalog") / "data"
    for name in BUILTIN_FILES:
        yield f"built-in {name}", (data / name).read_text()
    user_files = sorted(user_dir.glob("*.y*ml")) if user_dir and user_dir.is_dir() else []
    for path in [*user_files, *map(Path, extra_files)]:
        try:
            yield str(path), path.read_text()
        except OSError as exc:
            raise CatalogError(f"{path}: cannot read catalog file ({exc.strerror})") from None


def _merge(label: str, text: str, sections: dict[str, dict[str, Any]]) -> float | None:
    try:
        data = yaml.load(text, Loader=_YAML_LOADER) or {}
    except yaml.YAMLError as exc:
        raise CatalogError(f"{label}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise CatalogError(f"{label}: expected a mapping with accelerators/instances/regions")
    unknown = set(data) - {*_SECTIONS, "default_pue", "schema"}
    if unknown:
        raise CatalogError(
            f"{label}: unknown top-level key(s) {sorted(unknown)}; "
            f"use accelerators, instances, regions, purchases or default_pue"
        )
    for key, model in _SECTIONS.items():
        for index, raw in enumerate(data.get(key) or []):
            entry = _validate(label, key, index, raw, model)
            sections[key][entry.name] = entry  # type: ignore[attr-defined]
    return _default_pue(label, data.get("default_pue"))


def _validate(label: str, key: str, index: int, raw: Any, model: type[BaseModel]) -> BaseModel:
    name = raw.get("name", f"#{index}") if isinstance(raw, dict) else f"#{index}"
    if not isinstance(raw, dict):
        raise CatalogError(f"{label}: {key} entry {name}: expected a mapping of fields")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"field {'.'.join(map(str, p['loc'])) or '(entry)'}: "
            + ("unknown field" if p["type"] == "extra_forbidden" else p["msg"])
            + ("" if p["type"] == "missing" else f" (got {p.get('input')!r})")
            for p in exc.errors()
        )
        raise CatalogError(f"{label}: {key} entry {name!r}: {problems}") from None


def _default_pue(label: str, value: Any) -> float | None:
    if value is None:
        return None
    if not isinstance(value, int | float) or value < 1.0:
        raise CatalogError(f"{label}: default_pue must be a number >= 1.0, got {value!r}")
    return float(value)
