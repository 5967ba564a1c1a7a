"""The ``Backend`` protocol, the job request every backend accepts, and the registry.

``kilowatt train``, ``kilowatt serve`` and ``kilowatt submit`` go through a backend chosen
by the spec's ``backend:`` (``local`` or ``ray``) or a ``--backend`` flag:

    >>> backend = get_backend("local")  # doctest: +SKIP
    >>> job_id = backend.submit(read_job_file("train.yaml"))  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from kilowatt.errors import SpecError
from kilowatt.spec import ServeSpec, Settings, TrainSpec, load_spec, read_yaml
from kilowatt.spec.backend import BackendKind, BackendSpec, CommandJobSpec

if TYPE_CHECKING:
    from kilowatt.meter import Accountant
    from kilowatt.train import Callback, FitResult

__all__ = [
    "Backend",
    "JobKind",
    "JobRequest",
    "get_backend",
    "read_job_file",
    "register_backend",
]

JobKind = Literal["train", "serve", "command"]


@dataclass(frozen=True)
class JobRequest:
    """A workload to queue or send to a cluster, as plain values (it is stored and shipped).

    Attributes:
        kind: ``train`` (a TrainSpec), ``serve`` (a ServeSpec) or ``command`` (a
            CommandJobSpec).
        spec: the validated spec as JSON-ready values.
        workdir: the folder the user's entry points are imported from.
    """

    kind: JobKind
    spec: dict[str, Any]
    workdir: str = field(default_factory=os.getcwd)

    @property
    def name(self) -> str:
        """The job's name (a serve spec is named after its first model)."""
        if self.kind == "serve":
            return str(self.spec["models"][0]["name"])
        return str(self.spec["name"])

    @property
    def backend(self) -> BackendSpec:
        """The spec's ``backend`` section."""
        return BackendSpec.model_validate(self.spec.get("backend") or {})

    def typed_spec(self) -> TrainSpec | ServeSpec | CommandJobSpec:
        """The spec as its pydantic model."""
        model = {"train": TrainSpec, "serve": ServeSpec, "command": CommandJobSpec}[self.kind]
        return model.model_validate(self.spec)

    def to_dict(self) -> dict[str, Any]:
        """What the job queue stores."""
        return {"kind": self.kind, "spec": self.spec, "workdir": self.workdir}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> JobRequest:
        """The inverse of ``to_dict``."""
        return cls(values["kind"], dict(values["spec"]), str(values["workdir"]))


def read_job_file(path: str | Path, workdir: str | None = None) -> JobRequest:
    """Read a spec file and tell its kind: ``command:`` -> command job, ``models:`` ->
    serving, otherwise training.

    Raises:
        SpecError: the file is not valid YAML or not a valid spec of its kind.
    """
    document = read_yaml(Path(path))
    if not isinstance(document, dict):
        raise SpecError(f"{path}: a job spec is a mapping; got {type(document).__name__}")
    kind: JobKind = (
        "command" if "command" in document else "serve" if "models" in document else "train"
    )
    model = {"train": TrainSpec, "serve": ServeSpec, "command": CommandJobSpec}[kind]
    spec = load_spec(model, Path(path))
    return JobRequest(kind, spec.model_dump(mode="json"), workdir or os.getcwd())


@runtime_checkable
class Backend(Protocol):
    """Runs training, serving and batch jobs somewhere: this machine or a Ray cluster."""

    name: str

    def train(
        self,
        spec: TrainSpec,
        *,
        callbacks: Sequence[Callback] = (),
        accountant: Accountant | None = None,
        **overrides: Any,
    ) -> FitResult:
        """Train ``spec`` to completion (or preemption) and return rank 0's result."""
        ...

    def serve(self, spec: ServeSpec, *, admin: bool = False) -> None:
        """Serve ``spec`` until stopped (SIGTERM or Ctrl-C)."""
        ...

    def submit(self, job: JobRequest) -> str:
        """Queue ``job`` and return its id (it runs later, in the background)."""
        ...


_REGISTRY: dict[str, Callable[..., Backend]] = {}


def register_backend(kind: str, factory: Callable[..., Backend]) -> None:
    """Make ``get_backend(kind)`` build backends with ``factory(**options)``."""
    _REGISTRY[kind] = factory


def get_backend(
    kind: BackendKind | str,
    *,
    settings: Settings | None = None,
    address: str | None = None,
    **options: Any,
) -> Backend:
    """The backend named ``kind`` (``local`` or ``ray``).

    Args:
        kind: the backend's name.
        settings: where the store and artifacts are (default: from the environment).
        address: the Ray cluster address (ignored by ``local``).
        options: backend-specific settings.

    Raises:
        SpecError: no backend has that name.
    """
    if not _REGISTRY:
        _register_builtin()
    if kind not in _REGISTRY:
        raise SpecError(f"backend {kind!r} is not known; use one of {sorted(_REGISTRY)}")
    settings = settings or Settings.from_env()
    if kind == "ray":
        options["address"] = address
    return _REGISTRY[kind](settings=settings, **options)


def _register_builtin() -> None:
    from kilowatt.backends.local import LocalBackend
    from kilowatt.backends.ray import RayBackend

    register_backend("local", LocalBackend)
    register_backend("ray", RayBackend)
