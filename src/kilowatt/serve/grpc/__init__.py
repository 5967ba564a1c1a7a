"""The Open Inference Protocol over gRPC (``inference.GRPCInferenceService``), with gRPC
health checking and server reflection, served from the HTTP server's engines.

``kilowatt serve model.pt --grpc-port 8081`` starts it beside HTTP; Triton's client works
against it unmodified:

>>> import tritonclient.grpc as triton  # doctest: +SKIP
>>> triton.InferenceServerClient("127.0.0.1:8081").is_server_ready()  # doctest: +SKIP
True

The stubs are generated from KServe's ``grpc_predict_v2.proto`` by ``generate_stubs.py``.
"""

from __future__ import annotations

from kilowatt.serve.grpc.endpoint import SERVICE_NAME, GrpcEndpoint, read_tls_pair
from kilowatt.serve.grpc.service import InferenceServicer, status_code

__all__ = ["SERVICE_NAME", "GrpcEndpoint", "InferenceServicer", "read_tls_pair", "status_code"]
