"""``inference.GRPCInferenceService`` (the Open Inference Protocol over gRPC) on the same
``InferenceServer`` as the HTTP app: same queues, batcher, admission control, traffic
split, cache, metrics and energy accounting.

Errors map to gRPC status codes in one place (``status_code``): a bad tensor is
INVALID_ARGUMENT, an unknown model NOT_FOUND, a full queue RESOURCE_EXHAUSTED, a deadline
that passed or cannot be met DEADLINE_EXCEEDED, a draining or loading model UNAVAILABLE.
The client's gRPC deadline is the request's deadline; metadata ``kilowatt-deadline-ms``
and ``kilowatt-routing-key`` work as the HTTP headers of the same names.

``ModelStreamInfer`` (Triton's bidirectional stream) serves the requests sent on one stream
concurrently, on the same engines, and answers each as it completes, carrying its ``id``.
A failed request is answered with ``error_message`` (and ``parameters["status"]``, the
status name a unary call would have ended with) while the stream stays open. The stream's
deadline and metadata hold for every request sent on it.

The repository methods (index, load, unload) change every worker, as the HTTP admin
routes do, and like them answer only on a server started with ``--admin``
(PERMISSION_DENIED otherwise). A load with ``parameters["config"]``, a JSON object of
model settings (``{"source": "model.pt", "version": "2"}``, the HTTP route's
``parameters``), loads that version; without it, the served versions are reloaded from
their sources. An unload without ``parameters["version"]`` unloads every version.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
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
from kilowatt.serve.repository import Repository
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


def _error_status(error: Exception) -> tuple[grpc.StatusCode, str]:
    """The status and message a failed request is answered with."""
    code = status_code(error)
    if code == grpc.StatusCode.INTERNAL and not isinstance(error, KilowattError):
        _log.exception("unexpected error while serving a gRPC request", exc_info=error)
        return code, f"internal error: {type(error).__name__}"
    return code, str(error)


def _retry_after_ms(error: Overloaded) -> int:
    return max(1, math.ceil(error.retry_after_s * 1000))


async def _answer(context: grpc.aio.ServicerContext, work: Callable[[], Awaitable[Reply]]) -> Reply:
    try:
        return await work()
    except Exception as exc:
        code, message = _error_status(exc)
        if isinstance(exc, Overloaded):
            # The HTTP Retry-After, as trailing metadata in milliseconds.
            context.set_trailing_metadata((("retry-after-ms", str(_retry_after_ms(exc))),))
        await context.abort(code, message)
        raise AssertionError("abort() raises") from exc  # pragma: no cover


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The OIP gRPC methods over one ``InferenceServer``.

    Args:
        server: the engines to serve.
        repository: answers the repository methods; without it they are refused with
            PERMISSION_DENIED (the server was not started with ``--admin``).
    """

    def __init__(self, server: InferenceServer, repository: Repository | None = None) -> None:
        self.server = server
        self.repository = repository

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
        return await _answer(context, lambda: self._infer(request, arrival_s, _options(context)))

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Answers each request of the stream as soon as it is done, so that requests in
        flight on one stream are batched together; a failed request is answered with
        ``error_message`` and the stream goes on."""

        async def read_metadata() -> dict[str, Any]:
            return _metadata_options(context)

        metadata = await _answer(context, read_metadata)  # a malformed value ends the stream
        answers: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        reader = asyncio.create_task(
            self._read_stream(request_iterator, context, metadata, answers)
        )
        try:
            while (answer := await answers.get()) is not None:
                yield answer
        finally:
            reader.cancel()
        await reader  # re-raises a failure to read the stream

    async def _read_stream(
        self,
        request_iterator: AsyncIterator[Any],
        context: Any,
        metadata: dict[str, Any],
        answers: asyncio.Queue[pb.ModelStreamInferResponse | None],
    ) -> None:
        in_flight: set[asyncio.Task[None]] = set()

        async def answer(request: Any, arrival_s: float, options: dict[str, Any]) -> None:
            answers.put_nowait(await self._stream_answer(request, arrival_s, options))

        try:
            async for request in request_iterator:
                options = _with_deadline(metadata, context)
                task = asyncio.create_task(answer(request, time.monotonic(), options))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            if in_flight:
                await asyncio.gather(*in_flight)
        finally:
            for task in list(in_flight):
                task.cancel()
            answers.put_nowait(None)

    async def _stream_answer(
        self, request: Any, arrival_s: float, options: dict[str, Any]
    ) -> pb.ModelStreamInferResponse:
        try:
            response = await self._infer(request, arrival_s, options)
            return pb.ModelStreamInferResponse(infer_response=response)
        except Exception as exc:
            code, message = _error_status(exc)
            failed = pb.ModelInferResponse(
                model_name=request.model_name, model_version=request.model_version, id=request.id
            )
            # The status a unary call would have ended with, for clients that branch on it.
            failed.parameters["status"].string_param = code.name
            if isinstance(exc, Overloaded):
                failed.parameters["retry_after_ms"].int64_param = _retry_after_ms(exc)
            return pb.ModelStreamInferResponse(error_message=message, infer_response=failed)

    async def _infer(
        self, request: Any, arrival_s: float, options: dict[str, Any]
    ) -> pb.ModelInferResponse:
        rows = decode_inputs(request)
        result = await self.server.infer(
            request.model_name,
            rows,
            version=request.model_version or None,
            arrival_s=arrival_s,
            **options,
        )
        response = pb.ModelInferResponse(
            model_name=request.model_name, model_version=result.version, id=request.id
        )
        requested = tuple(o.name for o in request.outputs)
        encode_outputs(result.outputs, response, bool(request.raw_input_contents), requested)
        return response

    # -- model repository (Triton's message layout; see grpc_predict_v2.proto) ---------

    async def RepositoryIndex(self, request: Any, context: Any) -> pb.RepositoryIndexResponse:
        repository = await self._admin(context)

        async def work() -> pb.RepositoryIndexResponse:
            _one_repository(request.repository_name)
            entry = pb.RepositoryIndexResponse.ModelIndex
            return pb.RepositoryIndexResponse(
                models=[
                    entry(name=e.name, version=e.version, state=e.state)
                    for e in repository.index(ready_only=request.ready)
                ]
            )

        return await _answer(context, work)

    async def RepositoryModelLoad(
        self, request: Any, context: Any
    ) -> pb.RepositoryModelLoadResponse:
        repository = await self._admin(context)

        async def work() -> pb.RepositoryModelLoadResponse:
            _one_repository(request.repository_name)
            name = _model_name(request)
            config = _load_config(request.parameters)
            if config is None:  # Triton's "reload": the served versions, from their sources
                await repository.reload(name)
            else:
                await repository.load(name, config)
            return pb.RepositoryModelLoadResponse()

        return await _answer(context, work)

    async def RepositoryModelUnload(
        self, request: Any, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        repository = await self._admin(context)

        async def work() -> pb.RepositoryModelUnloadResponse:
            _one_repository(request.repository_name)
            name = _model_name(request)
            await repository.unload(name, _unload_version(request.parameters))
            return pb.RepositoryModelUnloadResponse()

        return await _answer(context, work)

    async def _admin(self, context: grpc.aio.ServicerContext) -> Repository:
        if self.repository is None:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "the model repository is closed on this server; start it with --admin "
                "to list, load and unload models",
            )
            raise AssertionError("abort() raises")  # pragma: no cover
        return self.repository


def _one_repository(name: str) -> None:
    if name:
        raise InvalidInput(
            f"repository {name!r}: kilowatt serves a single repository; leave repository_name empty"
        )


def _model_name(request: Any) -> str:
    if not request.model_name:
        raise InvalidInput("model_name is empty; name the model to load or unload")
    return str(request.model_name)


def _load_config(parameters: Any) -> dict[str, Any] | None:
    """The model settings of a load request (``parameters["config"]``: a JSON object with
    ``source``, ``version``, ... as the HTTP load route's ``parameters``), or None for a
    reload of what is served."""
    unknown = sorted(set(parameters) - {"config"})
    if unknown:
        raise InvalidInput(
            f"load parameters {unknown} are not supported: kilowatt loads a model from the "
            'source named in parameters["config"], a JSON object such as '
            '{"source": "model.pt", "version": "2"}'
        )
    if "config" not in parameters:
        return None
    text = parameters["config"].string_param
    try:
        config = json.loads(text)
    except ValueError:
        config = None
    if not isinstance(config, dict):
        raise InvalidInput(
            f'parameters["config"] must be a JSON object of model settings, got {text!r}'
        )
    return config


def _unload_version(parameters: Any) -> str | None:
    """The version to unload (``parameters["version"]``), or None for every version;
    ``unload_dependents`` (sent by Triton's client) has nothing to act on here."""
    unknown = sorted(set(parameters) - {"version", "unload_dependents"})
    if unknown:
        raise InvalidInput(f"unload parameters {unknown} are not supported; give version")
    if "version" not in parameters:
        return None
    version = str(parameters["version"].string_param)
    if not version:
        raise InvalidInput('parameters["version"] is empty; give a version, or no parameter')
    return version


def _options(context: Any) -> dict[str, Any]:
    """The engine options of a unary call: its deadline and its metadata's."""
    return _with_deadline(_metadata_options(context), context)


def _with_deadline(metadata: dict[str, Any], context: Any) -> dict[str, Any]:
    """``metadata``'s options with the call's deadline as it stands now (a stream's
    deadline holds for every request sent on it)."""
    options = dict(metadata)
    remaining_s = context.time_remaining()
    if remaining_s is not None:
        options["deadline_s"] = min(max(remaining_s, 0.0), options.get("deadline_s", math.inf))
    return options


def _metadata_options(context: Any) -> dict[str, Any]:
    """Options from the call's metadata (a stream's hold for each request sent on it)."""
    options: dict[str, Any] = {}
    for key, value in context.invocation_metadata() or ():
        if key == _DEADLINE_KEY:
            try:
                options["deadline_s"] = float(value) / 1000.0
            except ValueError:
                raise InvalidInput(
                    f"{_DEADLINE_KEY} must be a number of milliseconds, got {value!r}"
                ) from None
        elif key == _ROUTING_KEY:
            options["key"] = value
    return options
