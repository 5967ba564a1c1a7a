"""The FastAPI routes: health, metadata, metrics, model repository, and the documented
inference routes (whose traffic the lean ASGI path in ``app`` answers first)."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from fastapi import Body, FastAPI, Request
from fastapi.responses import Response

import kilowatt
from kilowatt.serve.errors import InvalidInput, UnknownModel
from kilowatt.serve.metrics import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from kilowatt.serve.app import ServeApp
    from kilowatt.serve.server import InferenceServer

__all__ = ["EXTENSIONS", "add_routes", "describe_model"]

#: OIP extensions the server speaks (``GET /v2`` and gRPC ServerMetadata).
EXTENSIONS = ["binary_tensor_data", "model_repository", "kilowatt_predict"]

_PREDICT_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "inputs": {"type": "array", "description": "one sample or a list"},
                        "model": {"type": "string", "description": "needed if several"},
                    },
                }
            }
        },
    }
}
_OIP_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "inputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name", "shape", "datatype"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "shape": {"type": "array", "items": {"type": "integer"}},
                                    "datatype": {"type": "string"},
                                    "data": {"type": "array"},
                                    "parameters": {"type": "object"},
                                },
                            },
                        },
                        "outputs": {"type": "array"},
                        "parameters": {"type": "object"},
                    },
                }
            }
        },
    }
}


def _reply(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> Response:
    response = Response(body, status_code=status)
    for key, value in headers:
        response.headers[key.decode()] = value.decode()
    return response


def add_routes(api: FastAPI, front: ServeApp, admin: bool) -> None:
    """Attach every route of the server to ``api``."""
    server = front.server
    _add_health(api, front)
    _add_metadata(api, front)

    @api.get("/metrics", include_in_schema=True, summary="Prometheus metrics")
    def metrics() -> Response:
        return Response(server.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def _infer(request: Request) -> Response:
        body = await request.body()
        headers = {k.encode(): v.encode() for k, v in request.headers.items()}
        reply = await front.handle(request.url.path, body, headers, time.monotonic())
        return _reply(*reply)

    for path, summary, doc in (
        ("/predict", "Predict (plain JSON)", _PREDICT_DOC),
        ("/v2/models/{name}/infer", "Infer (Open Inference Protocol)", _OIP_DOC),
        ("/v2/models/{name}/versions/{version}/infer", "Infer a version", _OIP_DOC),
    ):
        api.add_api_route(path, _infer, methods=["POST"], summary=summary, openapi_extra=doc)
    if admin:
        _add_repository(api, front)


def _add_health(api: FastAPI, front: ServeApp) -> None:
    server = front.server

    @api.get("/v2/health/live", summary="Liveness")
    def live() -> dict[str, bool]:
        return {"live": True}

    @api.get("/v2/health/ready", summary="Readiness: every model loaded and warmed up")
    def ready() -> Response:
        ok = server.ready and not server.draining
        return Response(
            b'{"ready":true}' if ok else b'{"ready":false}',
            status_code=200 if ok else 503,
            media_type="application/json",
        )


def describe_model(server: InferenceServer, name: str, version: str | None) -> dict[str, Any]:
    """The OIP model metadata document (shared by the REST and gRPC routes)."""
    versions = server.models().get(name)
    if versions is None:
        raise UnknownModel(f"no model named {name!r}")
    engine = server.engine(name, version)
    return {
        "name": name,
        "versions": sorted(versions),
        "platform": "pytorch",
        "inputs": [
            {"name": i.name, "datatype": i.datatype, "shape": [-1, *i.shape]} for i in engine.inputs
        ],
        "outputs": [
            {"name": o.name, "datatype": o.datatype, "shape": list(o.shape)} for o in engine.outputs
        ],
    }


def _add_metadata(api: FastAPI, front: ServeApp) -> None:
    server = front.server

    @api.get("/v2", summary="Server metadata")
    def server_metadata() -> dict[str, Any]:
        return {"name": "kilowatt", "version": kilowatt.__version__, "extensions": EXTENSIONS}

    @api.get("/v2/models/{name}", summary="Model metadata")
    def model_metadata(name: str) -> dict[str, Any]:
        return describe_model(front.server, name, None)

    @api.get("/v2/models/{name}/versions/{version}", summary="Model version metadata")
    def version_metadata(name: str, version: str) -> dict[str, Any]:
        return describe_model(front.server, name, version)

    @api.get("/v2/models/{name}/ready", summary="Model readiness")
    def model_ready(name: str) -> Response:
        engine = server.engine(name)
        return Response(status_code=200 if engine.ready else 503)

    @api.get("/v2/models/{name}/versions/{version}/ready", summary="Version readiness")
    def version_ready(name: str, version: str) -> Response:
        engine = server.engine(name, version)
        return Response(status_code=200 if engine.ready else 503)


def _add_repository(api: FastAPI, front: ServeApp) -> None:
    repository = front.repository

    @api.get("/v2/repository/index", summary="Served model versions and their state")
    def index() -> list[dict[str, str]]:
        return [asdict(entry) for entry in repository.index()]

    @api.post("/v2/repository/models/{name}/load", summary="Load (hot reload) a model version")
    async def load(name: str, body: dict[str, Any] = Body(...)) -> dict[str, Any]:
        spec = await repository.load(name, body.get("parameters") or {})
        return {"name": name, "version": spec.version, "loaded": True}

    @api.post("/v2/repository/models/{name}/unload", summary="Drain and unload a version")
    async def unload(name: str, body: dict[str, Any] = Body(...)) -> dict[str, Any]:
        version = (body.get("parameters") or {}).get("version")
        if not isinstance(version, str):
            raise InvalidInput("give the version to unload as parameters.version")
        await repository.unload(name, version)
        return {"name": name, "version": version, "unloaded": True}

    @api.post("/v2/repository/models/{name}/weights", summary="Shift traffic between versions")
    async def weights(name: str, body: dict[str, float] = Body(...)) -> dict[str, Any]:
        await repository.set_weights(name, body)
        return {"name": name, "weights": body}
