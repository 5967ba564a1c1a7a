"""Model serving: dynamic batching, admission control, versions and traffic, on the Open
Inference Protocol.

>>> import kilowatt
>>> kilowatt.serve("mlp.pt", name="mlp", port=8080)  # doctest: +SKIP

The engine works without HTTP (``InferenceServer``); ``create_app`` wraps it in the ASGI
app, and ``serve`` runs that app under uvicorn until SIGTERM. With ``grpc_port`` the same
engines also answer the Open Inference Protocol over gRPC (``kilowatt.serve.grpc``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
from kilowatt.spec.serve import ModelSpec, ServeSpec

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
    "serve",
]


def serve(
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

    Example:
        >>> kilowatt.serve("mlp.pt", name="mlp", port=8080, workers=2)  # doctest: +SKIP
    """
    from kilowatt.serve.runner import run

    if isinstance(model, ServeSpec):
        spec = model.model_copy(update=settings) if settings else model
    else:
        source = str(model)
        label = name or Path(source.partition(":")[0] if ":" in source else source).stem
        spec = ServeSpec(models=[ModelSpec(name=label, source=source)], **settings)
    run(spec, callbacks=callbacks, meter=meter, admin=admin)
