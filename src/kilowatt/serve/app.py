"""The HTTP app: Open Inference Protocol v2 REST, ``POST /predict`` and ``/metrics``.

The two inference routes are served by a lean ASGI path (read the body, decode with
orjson, queue, encode) because they carry all the traffic; every other route, and the
OpenAPI document describing all of them, is a FastAPI app behind it.

>>> app = create_app(InferenceServer(spec))  # doctest: +SKIP
>>> uvicorn.run(app, host="127.0.0.1", port=8080)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

import kilowatt
from kilowatt.errors import KilowattError, Overloaded
from kilowatt.ports import announce, url_for
from kilowatt.serve.errors import BodyTooLarge, InvalidInput, UnknownModel, status_of
from kilowatt.serve.fleet import Fleet
from kilowatt.serve.protocol import (
    Tensors,
    decode_oip,
    decode_predict,
    encode_oip,
    encode_predict,
)
from kilowatt.serve.repository import Repository
from kilowatt.serve.server import InferenceServer
from kilowatt.spec.serve import ServeSpec

__all__ = [
    "DEADLINE_HEADER",
    "ROUTING_KEY_HEADER",
    "WORKER_HEADER",
    "ServeApp",
    "create_app",
    "grpc_url",
]

_log = logging.getLogger(__name__)

#: Milliseconds the client will wait; the server refuses at once when it cannot make it.
DEADLINE_HEADER = "kilowatt-deadline-ms"
#: Requests with the same key go to the same model version (sticky A/B).
ROUTING_KEY_HEADER = "kilowatt-routing-key"
#: The process id of the worker that answered (several workers share a port).
WORKER_HEADER = "kilowatt-worker-pid"
_BINARY_HEADER = "inference-header-content-length"
_WORKER = WORKER_HEADER.encode()

_INFER_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")
_JSON = b"application/json"
_OCTET = b"application/octet-stream"

Reply = tuple[int, list[tuple[bytes, bytes]], bytes]
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def _error_reply(error: BaseException) -> Reply:
    status = status_of(error)
    headers = [(b"content-type", _JSON)]
    if isinstance(error, Overloaded):
        # Retry-After is whole seconds (RFC 9110); never 0, which invites a retry storm.
        headers.append((b"retry-after", str(max(1, math.ceil(error.retry_after_s))).encode()))
    if status >= 500 and not isinstance(error, KilowattError):
        _log.exception("unexpected error while serving a request", exc_info=error)
        message = f"internal error: {type(error).__name__}"
    else:
        message = str(error)
    return status, headers, orjson.dumps({"error": message})


class ServeApp:
    """ASGI app: the fast inference path in front of the FastAPI app for everything else.

    Args:
        server: the models to serve.
        max_body_bytes: larger bodies get 413 without being read in full.
        admin: expose the model repository routes (load, unload, traffic weights).
    """

    def __init__(
        self, server: InferenceServer, max_body_bytes: int = 8 << 20, admin: bool = False
    ) -> None:
        self.server = server
        self.max_body_bytes = max_body_bytes
        self._pid = str(os.getpid()).encode()
        #: Whether the model repository may be read and changed (HTTP and gRPC).
        self.admin = admin
        self.repository = Repository(server)
        self.api = _build_api(self, admin)

    @property
    def fleet(self) -> Fleet | None:
        """The other workers of this server, when there are several; repository changes
        reach them through it (``kilowatt.serve.fleet``)."""
        return self.repository.fleet

    @fleet.setter
    def fleet(self, fleet: Fleet | None) -> None:
        self.repository.fleet = fleet

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            if path == "/predict" or _INFER_PATH.match(path):
                await self._fast(scope, receive, send)
                return
        await self.api(scope, receive, send)

    async def _fast(self, scope: Scope, receive: Receive, send: Send) -> None:
        arrival_s = time.monotonic()
        headers = dict(scope["headers"])
        try:
            body = await self._read_body(headers, receive)
        except BodyTooLarge as exc:
            reply = _error_reply(exc)
        else:
            reply = await self.handle(scope["path"], body, headers, arrival_s)
        status, reply_headers, payload = reply
        # Every answer, errors included, says which worker gave it.
        reply_headers.append((_WORKER, self._pid))
        reply_headers.append((b"content-length", str(len(payload)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": reply_headers})
        await send({"type": "http.response.body", "body": payload})

    async def _read_body(self, headers: dict[bytes, bytes], receive: Receive) -> bytes:
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise BodyTooLarge(
                f"the body is {int(declared)} bytes; this server accepts at most "
                f"{self.max_body_bytes} (send fewer samples per request)"
            )
        chunks, size = [], 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise BodyTooLarge(f"the body exceeds {self.max_body_bytes} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def handle(
        self, path: str, body: bytes, headers: dict[bytes, bytes], arrival_s: float
    ) -> Reply:
        """Answer one inference request given its path, raw body and headers."""
        try:
            if path == "/predict":
                return await self._predict(body, headers, arrival_s)
            match = _INFER_PATH.match(path)
            if match is None:
                raise UnknownModel(f"no inference route at {path}")
            return await self._oip(match.group(1), match.group(2), body, headers, arrival_s)
        except Exception as exc:
            return _error_reply(exc)

    def _options(self, headers: dict[bytes, bytes]) -> dict[str, Any]:
        options: dict[str, Any] = {}
        deadline = headers.get(DEADLINE_HEADER.encode())
        if deadline is not None:
            try:
                options["deadline_s"] = float(deadline) / 1000.0
            except ValueError:
                raise InvalidInput(
                    f"{DEADLINE_HEADER} must be a number of milliseconds, got {deadline!r}"
                ) from None
        key = headers.get(ROUTING_KEY_HEADER.encode())
        if key is not None:
            options["key"] = key.decode("latin-1")
        return options

    async def _predict(self, body: bytes, headers: dict[bytes, bytes], arrival_s: float) -> Reply:
        options = self._options(headers)
        probe = decode_predict(body, np.dtype(np.float32))  # dtype checked below
        name = probe.model or self.server.only_model()
        if name is None:
            served = ", ".join(sorted(self.server.models()))
            raise InvalidInput(
                f'several models are served ({served}); name one with "model" in the body '
                "or use /v2/models/{name}/infer"
            )
        engine = self.server.engine(name)
        rows = probe.rows if _all_fp32(engine) else _recast(body, engine)
        result = await self.server.infer(name, rows, arrival_s=arrival_s, **options)
        outputs = result.outputs
        if engine.is_one_sample(rows):
            outputs = _first_row(outputs)  # one sample in, one sample out
        return 200, self._headers(_JSON, result.version), encode_predict(outputs)

    async def _oip(
        self,
        name: str,
        version: str | None,
        body: bytes,
        headers: dict[bytes, bytes],
        arrival_s: float,
    ) -> Reply:
        options = self._options(headers)
        self.server.engine(name, version)  # an unknown model is 404 before the body is read
        header_length = headers.get(_BINARY_HEADER.encode())
        length = None
        if header_length is not None:
            if not header_length.isdigit():
                raise InvalidInput(f"{_BINARY_HEADER} must be an integer")
            length = int(header_length)
        request = decode_oip(body, length)
        result = await self.server.infer(
            name, request.rows, version=version, arrival_s=arrival_s, **options
        )
        payload, json_length = encode_oip(
            result.outputs,
            name,
            result.version,
            request.request_id,
            request.binary_output,
            request.outputs,
        )
        reply_headers = self._headers(_OCTET if json_length is not None else _JSON, result.version)
        if json_length is not None:
            reply_headers.append((_BINARY_HEADER.encode(), str(json_length).encode()))
        return 200, reply_headers, payload

    def _headers(self, content_type: bytes, version: str) -> list[tuple[bytes, bytes]]:
        return [
            (b"content-type", content_type),
            (b"kilowatt-model-version", version.encode()),
        ]


def _all_fp32(engine: Any) -> bool:
    return all(dtype == np.float32 for dtype in engine.input_dtypes().values())


def _recast(body: bytes, engine: Any) -> Tensors:
    return decode_predict(body, engine.input_dtype, engine.input_dtypes()).rows


def _first_row(outputs: Any) -> Any:
    if isinstance(outputs, dict):
        return {k: v[0] for k, v in outputs.items()}
    if isinstance(outputs, tuple):
        return tuple(v[0] for v in outputs)
    return outputs[0]


def create_app(
    server: InferenceServer,
    *,
    max_body_bytes: int = 8 << 20,
    admin: bool = False,
    load_on_startup: bool = True,
) -> ServeApp:
    """The ASGI app of ``server``; it loads the models at startup and drains at shutdown.

    Args:
        server: the models to serve.
        max_body_bytes: larger bodies get 413.
        admin: expose ``/v2/repository`` routes to load and unload versions at run time.
        load_on_startup: load (and warm up) the models in the ASGI lifespan startup.
    """
    app = ServeApp(server, max_body_bytes, admin)
    app.api.state.load_on_startup = load_on_startup
    return app


@contextlib.asynccontextmanager
async def _lifespan(api: FastAPI) -> AsyncIterator[None]:
    server: InferenceServer = api.state.server
    if api.state.load_on_startup and not server.ready:
        await asyncio.to_thread(server.load)
    fleet: Fleet | None = api.state.front.fleet
    if fleet is not None:
        await fleet.start()  # replays the repository changes made before this worker started
    grpc_endpoint = await _start_grpc(api.state.front)
    api.state.grpc_endpoint = grpc_endpoint  # its bound port, for whoever runs the app in-process
    try:
        yield
    finally:
        if fleet is not None:
            await fleet.stop()
        if grpc_endpoint is not None:
            await grpc_endpoint.stop(server.spec.drain_timeout_s)
        # The HTTP server has finished its in-flight requests; stop the engines.
        await asyncio.to_thread(server.close, server.spec.drain_timeout_s)


async def _start_grpc(front: ServeApp) -> Any:
    """The gRPC endpoint on the same engines and repository, in this event loop, when the
    spec asks."""
    spec = front.server.spec
    if spec.grpc_port is None:
        return None
    from kilowatt.serve.grpc import GrpcEndpoint, read_tls_pair

    tls = read_tls_pair(spec.tls_cert, spec.tls_key) if spec.tls_cert and spec.tls_key else None
    repository = front.repository if front.admin else None
    endpoint = GrpcEndpoint(
        front.server, spec.host, spec.grpc_port, tls, spec.max_body_bytes, repository
    )
    port = await endpoint.start()
    if spec.grpc_port == 0:  # bound here: say which port (several workers get it from run)
        announce("serve", grpc_url(spec, port))
    return endpoint


def grpc_url(spec: ServeSpec, port: int) -> str:
    """Where the gRPC endpoint of ``spec`` answers on ``port`` (``grpcs`` with TLS)."""
    return url_for(spec.host, port, "grpcs" if spec.tls_cert else "grpc")


def _build_api(front: ServeApp, admin: bool) -> FastAPI:
    from kilowatt.serve import routes

    api = FastAPI(
        title="kilowatt serve",
        version=kilowatt.__version__,
        description="Open Inference Protocol v2 and /predict, with dynamic batching.",
        lifespan=_lifespan,
    )
    api.state.server = front.server
    api.state.front = front
    api.state.load_on_startup = True
    routes.add_routes(api, front, admin)

    @api.exception_handler(KilowattError)
    async def _kilowatt_error(_: Request, exc: KilowattError) -> Response:
        status, headers, body = _error_reply(exc)
        extra = {k.decode(): v.decode() for k, v in headers if k != b"content-type"}
        return Response(body, status_code=status, media_type="application/json", headers=extra)

    return api
