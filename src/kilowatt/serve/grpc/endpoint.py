"""The gRPC server: the inference service, gRPC health checking and server reflection,
on a ``grpc.aio`` server in the HTTP server's event loop.

>>> endpoint = GrpcEndpoint(server, host="127.0.0.1", port=0)  # doctest: +SKIP
>>> port = await endpoint.start()  # doctest: +SKIP
>>> await endpoint.stop(grace_s=30)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kilowatt.errors import ServeError, SpecError
from kilowatt.serve.grpc import grpc_predict_v2_pb2 as pb
from kilowatt.serve.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from kilowatt.serve.grpc.service import InferenceServicer
from kilowatt.serve.repository import Repository
from kilowatt.serve.server import InferenceServer

__all__ = ["SERVICE_NAME", "GrpcEndpoint", "read_tls_pair"]

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name

# Tensors of a batch of images do not fit gRPC's 4 MiB default; the HTTP limit applies.
_MESSAGE_OPTIONS = ("grpc.max_receive_message_length", "grpc.max_send_message_length")


def read_tls_pair(cert_path: str, key_path: str) -> tuple[bytes, bytes]:
    """The PEM certificate chain and private key, read once at start-up."""
    pair = []
    for what, path in (("tls_cert", cert_path), ("tls_key", key_path)):
        try:
            pair.append(Path(path).read_bytes())
        except OSError as exc:
            raise SpecError(
                f"{what} {path!r} cannot be read ({exc.strerror}); give a PEM file"
            ) from None
    return pair[0], pair[1]


class GrpcEndpoint:
    """Serves ``server`` over gRPC on ``host:port`` (TLS when given a certificate and key).

    Args:
        server: the engines HTTP also serves.
        host: address to bind.
        port: TCP port; 0 picks a free one (``start`` returns the bound port).
        tls: PEM (certificate chain, private key) to serve over TLS.
        max_message_bytes: largest request or response message.
        repository: answers the repository methods (index, load, unload); without it
            they are refused with PERMISSION_DENIED, as the HTTP server has no
            repository routes without ``--admin``.
    """

    def __init__(
        self,
        server: InferenceServer,
        host: str,
        port: int,
        tls: tuple[bytes, bytes] | None = None,
        max_message_bytes: int = 8 << 20,
        repository: Repository | None = None,
    ) -> None:
        self.server = server
        self.host = host
        self.port = port
        self.tls = tls
        self.repository = repository
        self._options = [(name, max_message_bytes) for name in _MESSAGE_OPTIONS]
        self._grpc: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()

    async def start(self) -> int:
        """Bind and start serving; returns the bound port."""
        self._grpc = grpc.aio.server(options=self._options)
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(self.server, self.repository), self._grpc
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._grpc)
        names = (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME)
        # The OIP messages live in their own descriptor pool (see generate_stubs.py).
        reflection.enable_server_reflection(names, self._grpc, pool=pb.DESCRIPTOR.pool)
        address = f"{self.host}:{self.port}"
        if self.tls is not None:
            credentials = grpc.ssl_server_credentials([(self.tls[1], self.tls[0])])
            bound = self._grpc.add_secure_port(address, credentials)
        else:
            bound = self._grpc.add_insecure_port(address)
        if bound == 0:
            raise ServeError(f"cannot bind gRPC to {address}; is the port in use?")
        await self._grpc.start()
        serving = health_pb2.HealthCheckResponse.SERVING
        for name in ("", SERVICE_NAME):
            await self._health.set(name, serving)
        self.port = bound
        return bound

    async def stop(self, grace_s: float) -> None:
        """Report NOT_SERVING, let in-flight calls finish for up to ``grace_s``, stop."""
        if self._grpc is None:
            return
        await self._health.enter_graceful_shutdown()
        await self._grpc.stop(grace_s)
        self._grpc = None
