"""Serving on Ray: a Ray Serve deployment whose replicas each run kilowatt's engine.

Every replica builds an ``InferenceServer`` from the spec (dynamic batching, admission
control, versions) and serves the same ASGI app as ``kilowatt serve``, so the Open
Inference Protocol routes, ``/predict`` and ``/metrics`` are unchanged. Ray Serve's
autoscaler adds replicas while each has more than ``target_ongoing_requests`` in flight
and removes them when the load falls, between ``min_replicas`` and ``max_replicas``.

With ``grpc_port`` in the spec, Ray Serve's gRPC proxy also serves the Open Inference
Protocol's ``inference.GRPCInferenceService`` on that port: each replica answers its
methods, Triton's bidirectional ``ModelStreamInfer`` included, with the same servicer as
``kilowatt serve --grpc-port``. The repository methods are not served: Ray Serve deploys
and updates the replicas.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from kilowatt.ports import reserve_port
from kilowatt.spec import ServeSpec

__all__ = ["DEPLOYMENT_NAME", "RayDeployment", "deploy", "replica_count"]

#: The name of the deployment inside each Ray Serve application.
DEPLOYMENT_NAME = "kilowatt"
_ADD_SERVICER = (
    "kilowatt.serve.grpc.grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server"
)


class _Replica:
    """One Ray Serve replica: kilowatt's server, loaded and warmed up before traffic."""

    def __init__(self, spec_json: str, workdir: str) -> None:
        from kilowatt.serve import InferenceServer, ServeMetrics

        if workdir not in sys.path:
            sys.path.insert(0, workdir)  # handlers named module:Class live next to the spec
        # Ray Serve's proxies own the ports: the replica's app must not bind gRPC itself.
        self.spec = ServeSpec.model_validate_json(spec_json).model_copy(update={"grpc_port": None})
        self.server = InferenceServer(self.spec, metrics=ServeMetrics())
        self.server.load()

    def __serve_build_asgi_app__(self) -> Any:
        from kilowatt.serve import create_app

        return create_app(
            self.server, max_body_bytes=self.spec.max_body_bytes, load_on_startup=False
        )

    # -- the OIP gRPC methods, called by Ray Serve's gRPC proxy --------------------------

    async def ServerLive(self, request: Any, grpc_context: Any = None) -> Any:
        return await self._grpc("ServerLive", request, grpc_context)

    async def ServerReady(self, request: Any, grpc_context: Any = None) -> Any:
        return await self._grpc("ServerReady", request, grpc_context)

    async def ModelReady(self, request: Any, grpc_context: Any = None) -> Any:
        return await self._grpc("ModelReady", request, grpc_context)

    async def ServerMetadata(self, request: Any, grpc_context: Any = None) -> Any:
        return await self._grpc("ServerMetadata", request, grpc_context)

    async def ModelMetadata(self, request: Any, grpc_context: Any = None) -> Any:
        return await self._grpc("ModelMetadata", request, grpc_context)

    async def ModelInfer(self, request: Any, grpc_context: Any = None) -> Any:
        return await self._grpc("ModelInfer", request, grpc_context)

    async def ModelStreamInfer(
        self, request_stream: AsyncIterator[Any], grpc_context: Any = None
    ) -> AsyncIterator[Any]:
        """Triton's bidirectional stream: the requests of one stream run on this replica,
        batched together, each answered as it completes (Ray Serve passes the stream)."""
        from kilowatt.serve.grpc import InferenceServicer

        answers = InferenceServicer(self.server).ModelStreamInfer(
            request_stream, _RayContext(grpc_context)
        )
        try:
            async for answer in answers:
                yield answer
        except _Aborted:  # a malformed stream; its status and details are on Ray's context
            return

    async def _grpc(self, method: str, request: Any, grpc_context: Any) -> Any:
        from kilowatt.serve.grpc import InferenceServicer
        from kilowatt.serve.grpc import grpc_predict_v2_pb2 as pb

        servicer = InferenceServicer(self.server)
        try:
            return await getattr(servicer, method)(request, _RayContext(grpc_context))
        except _Aborted:  # the status and details are on Ray's context
            return getattr(pb, f"{method}Response")()

    def check_health(self) -> None:
        """Ray Serve restarts a replica whose server is not ready."""
        if not self.server.ready:
            raise RuntimeError("the kilowatt server of this replica is not ready")


class _Aborted(Exception):
    """A gRPC method ended with a non-OK status."""


class _RayContext:
    """The part of grpc.aio's servicer context that ``InferenceServicer`` uses, over Ray
    Serve's gRPC context (which sets a status instead of aborting)."""

    def __init__(self, ray_context: Any) -> None:
        self._context = ray_context

    def time_remaining(self) -> float | None:
        return None  # the proxy enforces the client's deadline and request_timeout_s

    def invocation_metadata(self) -> Any:
        return self._context.invocation_metadata() if self._context is not None else ()

    def set_trailing_metadata(self, metadata: Any) -> None:
        if self._context is not None:
            self._context.set_trailing_metadata(metadata)

    async def abort(self, code: Any, details: str) -> None:
        if self._context is not None:
            self._context.set_code(code)
            self._context.set_details(details)
        raise _Aborted(details)


@dataclass(frozen=True)
class RayDeployment:
    """A running Ray Serve application of a kilowatt spec.

    Attributes:
        name: the Ray Serve application name.
        url: the HTTP address of Ray Serve's proxy (OIP routes under it).
        grpc_target: ``host:port`` of Ray Serve's gRPC proxy, when the spec asked for gRPC.
    """

    name: str
    url: str
    grpc_target: str | None = None

    def replicas(self) -> int:
        """Replicas running now."""
        return replica_count(self.name)

    def stop(self) -> None:
        """Delete the application (its replicas drain and stop)."""
        from ray import serve

        serve.delete(self.name)


def replica_count(app_name: str) -> int:
    """How many replicas of ``app_name``'s kilowatt deployment are RUNNING."""
    from ray import serve

    application = serve.status().applications.get(app_name)
    if application is None:
        return 0
    deployment = application.deployments.get(DEPLOYMENT_NAME)
    if deployment is None:
        return 0
    return int(deployment.replica_states.get("RUNNING", 0))


def deploy(spec: ServeSpec, *, workdir: str, name: str | None = None) -> RayDeployment:
    """Start (or update) the Ray Serve application for ``spec`` on the connected cluster.

    HTTP is served by Ray Serve's proxy on ``spec.host:spec.port``; the proxy starts with
    the first application and keeps its address afterwards.
    """
    from ray import serve

    options = spec.backend.ray
    app_name = name or spec.models[0].name
    port = spec.port or reserve_port(spec.host)  # the proxy cannot bind port 0 itself
    grpc_port = None
    options_by_kind: dict[str, Any] = {"http_options": {"host": spec.host, "port": port}}
    if spec.grpc_port is not None:
        from ray.serve.config import gRPCOptions

        grpc_port = spec.grpc_port or reserve_port(spec.host)
        options_by_kind["grpc_options"] = gRPCOptions(
            port=grpc_port, grpc_servicer_functions=[_ADD_SERVICER]
        )
    serve.start(**options_by_kind)
    replica = serve.deployment(
        serve.ingress()(_Replica),
        name=DEPLOYMENT_NAME,
        ray_actor_options=_actor_options(options.cpus_per_worker, options.gpus_per_worker),
        autoscaling_config={
            "min_replicas": options.min_replicas,
            "initial_replicas": max(1, options.min_replicas),
            "max_replicas": options.max_replicas,
            "target_ongoing_requests": options.target_ongoing_requests,
            "upscale_delay_s": options.upscale_delay_s,
            "downscale_delay_s": options.downscale_delay_s,
            "look_back_period_s": options.look_back_period_s,
        },
        # Replicas batch internally, so each may hold many requests; admission control
        # (429/503) stays kilowatt's.
        max_ongoing_requests=max(8, spec.batching.queue_capacity),
    )
    serve.run(
        replica.bind(spec.model_dump_json(), workdir),
        name=app_name,
        route_prefix="/",
        blocking=False,
    )
    grpc_target = f"{spec.host}:{grpc_port}" if grpc_port is not None else None
    return RayDeployment(app_name, f"http://{spec.host}:{_proxy_port(port)}", grpc_target)


def _actor_options(cpus: float, gpus: float) -> dict[str, float]:
    options = {"num_cpus": cpus}
    if gpus > 0:
        options["num_gpus"] = gpus
    return options


def _proxy_port(requested: int) -> int:
    """The proxy's port: ``requested``, unless Serve was already running on another."""
    from ray.serve import context

    try:
        # Serve keeps the first start's HTTP options; there is no public getter for them.
        return int(context._get_global_client().http_config.port)
    except (AttributeError, TypeError, ValueError):
        return requested
