"""Model serving: dynamic batching, admission control, versions and traffic, on the Open
Inference Protocol.

>>> import kilowatt
>>> kilowatt.run_server("mlp.pt", name="mlp", port=8080)  # doctest: +SKIP

The engine works without HTTP (``InferenceServer``); ``create_app`` wraps it in the ASGI
app, and ``run_server`` runs that app under uvicorn until SIGTERM. With ``grpc_port`` the same
engines also answer the Open Inference Protocol over gRPC (``kilowatt.serve.grpc``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from kilowatt.errors import SpecError
from kilowatt.serve.app import DEADLINE_HEADER, ROUTING_KEY_HEADER, ServeApp, create_app
from kilowatt.serve.engine import ModelEngine
from kilowatt.serve.errors import (
    DeadlineUnmeetable,
    EngineClosed,
    InvalidInput,
    QueueFull,
    RequestTimeout,
    UnknownModel,
)
from kilowatt.serve.handler import ModelHandler, TorchHandler, load_handler
from kilowatt.serve.metrics import ServeMetrics
from kilowatt.serve.server import DeploymentEvent, InferenceServer, InferResult, ServeCallback
from kilowatt.spec import format_validation_error
from kilowatt.spec.serve import ServeSpec

__all__ = [
    "DEADLINE_HEADER",
    "ROUTING_KEY_HEADER",
    "DeadlineUnmeetable",
    "DeploymentEvent",
    "EngineClosed",
    "InferResult",
    "InferenceServer",
    "InvalidInput",
    "ModelEngine",
    "ModelHandler",
    "QueueFull",
    "RequestTimeout",
    "ServeApp",
    "ServeCallback",
    "ServeMetrics",
    "TorchHandler",
    "UnknownModel",
    "create_app",
    "load_handler",
    "run_server",
]


def run_server(
    model: ServeSpec | str | Path,
    *,
    name: str | None = None,
    callbacks: Sequence[ServeCallback] = (),
    meter: Any = None,
    admin: bool = False,
    **settings: Any,
) -> None:
    """Serve a model file or a whole ``ServeSpec`` over HTTP until SIGTERM, then drain.

    Args:
        model: a ``ServeSpec``, or a model file / ``module:Class`` handler.
        name: the model's name when ``model`` is a file (default: the file's stem).
        callbacks: deployment hooks, e.g. a store-backed recorder.
        meter: energy meter for per-request joules (default: this process's meter).
        admin: expose the model repository routes for hot reload over HTTP.
        **settings: ``ServeSpec`` fields (``host``, ``port``, ``workers``, ``batching``...).

    Raises:
        SpecError: a setting is unknown or out of range (the message names it).

    Example:
        >>> kilowatt.run_server("mlp.pt", name="mlp", port=8080, workers=2)  # doctest: +SKIP
    """
    from kilowatt.serve.runner import run

    run(_serve_spec(model, name, settings), callbacks=callbacks, meter=meter, admin=admin)


def _serve_spec(
    model: ServeSpec | str | Path, name: str | None, settings: dict[str, Any]
) -> ServeSpec:
    """The spec to serve, with ``settings`` validated as strictly as a YAML spec."""
    if isinstance(model, ServeSpec):
        if not settings:
            return model
        fields = {**model.model_dump(), **settings}
    else:
        source = str(model)
        label = name or Path(source.partition(":")[0] if ":" in source else source).stem
        fields = {"models": [{"name": label, "source": source}], **settings}
    try:
        return ServeSpec.model_validate(fields)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, "run_server settings")) from None
