"""The ``Backend`` protocol and the registry of backends (the job request is in ``job``).

``kilowatt train``, ``kilowatt serve`` and ``kilowatt submit`` go through a backend chosen
by the spec's ``backend:`` (``local`` or ``ray``) or a ``--backend`` flag:

    >>> backend = get_backend("local")  # doctest: +SKIP
    >>> job_id = backend.submit(read_job_file("train.yaml"))  # doctest: +SKIP

The registry imports the built-in backends on first use; they import only ``job``, never
this module, so the package has no import cycle.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from kilowatt.backends.job import JobRequest
from kilowatt.errors import SpecError
from kilowatt.spec import ServeSpec, Settings, TrainSpec
from kilowatt.spec.backend import BackendKind

if TYPE_CHECKING:
    from kilowatt.meter import Accountant
    from kilowatt.train import Callback, FitResult

__all__ = ["Backend", "get_backend", "register_backend"]


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
