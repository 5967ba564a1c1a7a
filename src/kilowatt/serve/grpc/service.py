"""``inference.GRPCInferenceService`` (the Open Inference Protocol over gRPC) on the same
``InferenceServer`` as the HTTP app: same queues, batcher, admission control, traffic
split, cache, metrics and energy accounting.

Errors map to gRPC status codes in one place (``status_code``): a bad tensor is
INVALID_ARGUMENT, an unknown model NOT_FOUND, a full queue RESOURCE_EXHAUSTED, a deadline
that passed or cannot be met DEADLINE_EXCEEDED, a draining or loading model UNAVAILABLE.
The client's gRPC deadline is the request's deadline; metadata ``kilowatt-deadline-ms``
and ``kilowatt-routing-key`` work as the HTTP headers of the same names.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

import kilowatt
from kilowatt.errors import KilowattError, Overloaded
from kilowatt.serve.errors import (
    DeadlineUnmeetable,
    EngineClosed,
    InvalidInput,
    ModelNotReady,
    QueueFull,
    RequestTimeout,
    UnknownModel,
)
from kilowatt.serve.grpc import grpc_predict_v2_pb2 as pb
from kilowatt.serve.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from kilowatt.serve.grpc.tensors import decode_inputs, encode_outputs
from kilowatt.serve.routes import EXTENSIONS, describe_model
from kilowatt.serve.server import InferenceServer

__all__ = ["InferenceServicer", "status_code"]

_log = logging.getLogger(__name__)

_DEADLINE_KEY = "kilowatt-deadline-ms"
_ROUTING_KEY = "kilowatt-routing-key"

Reply = TypeVar("Reply")


def status_code(error: BaseException) -> grpc.StatusCode:
    """The gRPC status of an error; the counterpart of ``kilowatt.serve.errors.status_of``."""
    if isinstance(error, InvalidInput):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(error, UnknownModel):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(error, QueueFull):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if isinstance(error, DeadlineUnmeetable | RequestTimeout):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if isinstance(error, EngineClosed | ModelNotReady | Overloaded):
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INTERNAL


async def _answer(context: grpc.aio.ServicerContext, work: Callable[[], Awaitable[Reply]]) -> Reply:
    try:
        return await work()
    except Exception as exc:
        code = status_code(exc)
        if code == grpc.StatusCode.INTERNAL and not isinstance(exc, KilowattError):
            _log.exception("unexpected error while serving a gRPC request", exc_info=exc)
            message = f"internal error: {type(exc).__name__}"
        else:
            message = str(exc)
        if isinstance(exc, Overloaded):
            # The HTTP Retry-After, as trailing metadata in milliseconds.
            retry_ms = str(max(1, math.ceil(exc.retry_after_s * 1000)))
            context.set_trailing_metadata((("retry-after-ms", retry_ms),))
        await context.abort(code, message)
        raise AssertionError("abort() raises") from exc  # pragma: no cover


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The OIP gRPC methods over one ``InferenceServer``."""

    def __init__(self, server: InferenceServer) -> None:
        self.server = server

    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.server.ready and not self.server.draining)

    async def ModelReady(self, request: Any, context: Any) -> pb.ModelReadyResponse:
        try:
            engine = self.server.engine(request.name, request.version or None)
        except UnknownModel:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=engine.ready)

    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name="kilowatt", version=kilowatt.__version__, extensions=EXTENSIONS
        )

    async def ModelMetadata(self, request: Any, context: Any) -> pb.ModelMetadataResponse:
        async def work() -> pb.ModelMetadataResponse:
            doc = describe_model(self.server, request.name, request.version or None)
            return pb.ModelMetadataResponse(
                name=doc["name"],
                versions=doc["versions"],
                platform=doc["platform"],
                inputs=[pb.ModelMetadataResponse.TensorMetadata(**i) for i in doc["inputs"]],
                outputs=[pb.ModelMetadataResponse.TensorMetadata(**o) for o in doc["outputs"]],
            )

        return await _answer(context, work)

    async def ModelInfer(self, request: Any, context: Any) -> pb.ModelInferResponse:
        arrival_s = time.monotonic()

        async def work() -> pb.ModelInferResponse:
            rows = decode_inputs(request)
            result = await self.server.infer(
                request.model_name,
                rows,
                version=request.model_version or None,
                arrival_s=arrival_s,
                **_options(context),
            )
            response = pb.ModelInferResponse(
                model_name=request.model_name, model_version=result.version, id=request.id
            )
            requested = tuple(o.name for o in request.outputs)
            encode_outputs(result.outputs, response, bool(request.raw_input_contents), requested)
            return response

        return await _answer(context, work)


def _options(context: Any) -> dict[str, Any]:
    options: dict[str, Any] = {}
    remaining_s = context.time_remaining()
    if remaining_s is not None:
        options["deadline_s"] = max(remaining_s, 0.0)
    for key, value in context.invocation_metadata() or ():
        if key == _DEADLINE_KEY:
            try:
                deadline_s = float(value) / 1000.0
            except ValueError:
                raise InvalidInput(
                    f"{_DEADLINE_KEY} must be a number of milliseconds, got {value!r}"
                ) from None
            options["deadline_s"] = min(deadline_s, options.get("deadline_s", math.inf))
        elif key == _ROUTING_KEY:
            options["key"] = value
    return options
