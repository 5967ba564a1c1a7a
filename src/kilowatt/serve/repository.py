"""The model repository of a running server: which versions it serves, and changes to
them (load or hot reload, unload, traffic weights), shared by the HTTP admin routes and
the gRPC repository methods.

A change is applied by every worker of the server before the call returns: through the
workers' shared journal (``kilowatt.serve.fleet``) when there are several, in this process
when there is one.

>>> repository = Repository(server)  # doctest: +SKIP
>>> await repository.load("mlp", {"source": "mlp.pt", "version": "2"})  # doctest: +SKIP
>>> repository.index()  # doctest: +SKIP
[ModelIndex(name='mlp', version='1', state='READY'), ModelIndex(name='mlp', version='2', ...)]
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kilowatt.serve.errors import InvalidInput
from kilowatt.serve.fleet import Fleet, apply_change
from kilowatt.serve.server import InferenceServer
from kilowatt.spec.serve import ModelSpec

__all__ = ["ModelIndex", "Repository"]


@dataclass(frozen=True)
class ModelIndex:
    """One served model version: ``state`` is READY or LOADING."""

    name: str
    version: str
    state: str


class Repository:
    """Reads and changes the models ``server`` serves, across every worker.

    Args:
        server: this process's engines.
        fleet: the other workers of the server, when there are several.
    """

    def __init__(self, server: InferenceServer, fleet: Fleet | None = None) -> None:
        self.server = server
        self.fleet = fleet

    def index(self, ready_only: bool = False) -> list[ModelIndex]:
        """Every served version, by name then version."""
        entries = [
            ModelIndex(name, version, "READY" if engine.ready else "LOADING")
            for name, versions in sorted(self.server.models().items())
            for version, engine in sorted(versions.items())
        ]
        return [e for e in entries if e.state == "READY" or not ready_only]

    async def load(self, name: str, parameters: Mapping[str, Any]) -> ModelSpec:
        """Load (or hot reload) a version of ``name`` from ``parameters``: the fields of a
        ``ModelSpec`` (``source``, ``version``, ...) and optionally ``weights``, the traffic
        share of each version afterwards.

        Raises:
            InvalidInput: the parameters are not a valid model.
        """
        if not isinstance(parameters, Mapping):
            raise InvalidInput(f"model parameters must be an object, got {parameters!r}")
        settings = dict(parameters)
        weights = settings.pop("weights", None)
        try:
            spec = ModelSpec(name=name, **settings)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"invalid model parameters: {exc}") from None
        await self._apply({"op": "load", "spec": spec.model_dump(), "weights": weights})
        return spec

    async def reload(self, name: str) -> list[str]:
        """Load every served version of ``name`` again from its source, keeping the traffic
        weights; returns the versions.

        Raises:
            UnknownModel: no model of that name is served.
        """
        specs, weights = self.server.deployed(name)
        for spec in specs.values():
            await self._apply({"op": "load", "spec": spec.model_dump(), "weights": weights})
        return sorted(specs)

    async def unload(self, name: str, version: str | None = None) -> list[str]:
        """Drain and unload ``version`` of ``name``, or every version; returns those unloaded.

        Raises:
            UnknownModel: no such model or version is served.
        """
        versions = [version] if version is not None else sorted(self.server.deployed(name)[0])
        for each in versions:
            await self._apply({"op": "unload", "name": name, "version": each})
        return versions

    async def set_weights(self, name: str, weights: Mapping[str, float]) -> None:
        """Shift traffic between the loaded versions of ``name``."""
        await self._apply({"op": "weights", "name": name, "weights": dict(weights)})

    async def _apply(self, change: dict[str, Any]) -> None:
        if self.fleet is not None:
            await self.fleet.submit(change)
        else:
            await asyncio.to_thread(apply_change, self.server, change)
