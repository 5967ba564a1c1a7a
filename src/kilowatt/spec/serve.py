"""Serving specs: which models to serve, how to batch them, and the latency objective.

A ``ServeSpec`` is what ``kilowatt serve`` builds from its flags or a YAML file:

>>> spec = ServeSpec(models=[ModelSpec(name="mlp", source="mlp.pt")])
>>> spec.batching.max_batch_size
64
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from kilowatt.spec.backend import BackendSpec
from kilowatt.spec.base import Spec

__all__ = ["BatchingSpec", "InputSpec", "ModelSpec", "ServeSLO", "ServeSpec"]

# torch.export and TorchScript files are recognised by content, ONNX by its ``.onnx``
# suffix; the others need a hint.
ModelFormat = Literal["auto", "torchscript", "export", "onnx", "state_dict", "handler"]


class BatchingSpec(Spec):
    """How requests of one model version are queued and grouped into batches.

    Attributes:
        max_batch_size: most requests run in one forward pass.
        max_queue_delay_s: longest a request waits for a batch to fill. The adaptive
            batcher never waits while the model is idle: it runs what is queued the moment
            the model is free, so the delay only applies with ``adaptive: false``.
        adaptive: run as soon as the model is free instead of always waiting the delay.
        queue_capacity: requests that may wait per version; beyond it requests get 429.
    """

    max_batch_size: int = Field(64, ge=1, le=65536)
    max_queue_delay_s: float = Field(0.002, ge=0.0, le=10.0)
    adaptive: bool = True
    queue_capacity: int = Field(1024, ge=1)


class ServeSLO(Spec):
    """The latency objective; the default request deadline comes from it.

    Attributes:
        latency_s: target end-to-end latency of one request; a request whose deadline
            cannot be met is refused with 503 at once instead of queueing.
        timeout_s: a request still unanswered after this long gets 504.
    """

    latency_s: float = Field(0.5, gt=0.0)
    timeout_s: float = Field(30.0, gt=0.0)


class InputSpec(Spec):
    """One named input of a model with several inputs.

    Attributes:
        name: the tensor name clients send (OIP ``inputs[].name``, ``/predict`` key).
        shape: shape of one sample of this input.
        datatype: Open Inference Protocol datatype name (FP32, INT64, ...).
    """

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    shape: tuple[int, ...]
    datatype: str = "FP32"


class ModelSpec(Spec):
    """One version of one served model.

    Attributes:
        name: the model name clients use in ``/v2/models/{name}``.
        source: a file (TorchScript, torch.export ``.pt2``, ONNX ``.onnx``, a state dict) or, for
            ``format: handler``, ``module:Class`` of a class with ``load()`` and
            ``predict(batch)``.
        version: the version label (``/v2/models/{name}/versions/{version}``).
        format: how to read ``source``; ``auto`` recognises TorchScript and torch.export.
        factory: ``module:function`` that builds the module for a state dict.
        weight: share of the model's traffic routed to this version.
        shadow: receive a copy of the traffic; its answers are compared, then discarded.
        input_shape: shape of one sample, used for warm-up and request checks;
            read from the model when it declares one.
        input_dtype: dtype of the input tensor (Open Inference Protocol names: FP32, ...).
        inputs: the named inputs of a model that takes several tensors, in the order its
            ``forward`` takes them (instead of ``input_shape`` and ``input_dtype``).
    """

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    source: str = Field(min_length=1)
    version: str = Field("1", min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    format: ModelFormat = "auto"
    factory: str | None = None
    weight: float = Field(1.0, ge=0.0)
    shadow: bool = False
    input_shape: tuple[int, ...] | None = None
    input_dtype: str = "FP32"
    inputs: tuple[InputSpec, ...] | None = None

    @model_validator(mode="after")
    def _state_dict_needs_factory(self) -> ModelSpec:
        if self.format == "state_dict" and not self.factory:
            raise ValueError("a state dict needs factory: 'module:function' that builds the module")
        return self

    @model_validator(mode="after")
    def _inputs_named_once(self) -> ModelSpec:
        if self.inputs is None:
            return self
        names = [i.name for i in self.inputs]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"inputs must name each tensor once, got {names}")
        if self.input_shape is not None:
            raise ValueError("give either input_shape or inputs (one shape per named input)")
        return self


class ServeSpec(Spec):
    """Everything ``kilowatt serve`` needs: models, batching, SLO, cache and processes.

    Attributes:
        models: served model versions; several versions of one name split its traffic.
        batching: queue and batcher settings, shared by every version.
        slo: latency objective and request timeout.
        cache_bytes: size of the response cache (LRU by version + input); 0 disables it.
        host: address to bind; 127.0.0.1 keeps the server private to the machine.
        port: TCP port; 0 lets the server bind a free one, which it announces on stderr.
        workers: server processes sharing the port.
        threads_per_worker: torch CPU threads per process; ``None`` shares the cores
            evenly between the workers (the event loop's parsing fits between passes).
        max_body_bytes: larger request bodies get 413.
        drain_timeout_s: on SIGTERM, how long in-flight requests may take to finish.
        backend: where it runs (``local`` or ``ray``, with Ray Serve autoscaling options).
        grpc_port: also serve the Open Inference Protocol over gRPC on this port (0 picks
            a free one, announced on stderr like the HTTP one), from the same engines as
            HTTP; ``None`` serves HTTP only.
        tls_cert: PEM certificate chain; with ``tls_key``, HTTP and gRPC are served over TLS.
        tls_key: PEM private key of ``tls_cert``.
    """

    models: list[ModelSpec] = Field(min_length=1)
    batching: BatchingSpec = BatchingSpec()
    slo: ServeSLO = ServeSLO()
    cache_bytes: int = Field(0, ge=0)
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=64)
    threads_per_worker: int | None = Field(None, ge=1)
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    drain_timeout_s: float = Field(30.0, gt=0.0)
    backend: BackendSpec = BackendSpec()
    grpc_port: int | None = Field(None, ge=0, le=65535)
    tls_cert: str | None = None
    tls_key: str | None = None

    @model_validator(mode="after")
    def _tls_pair(self) -> ServeSpec:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError(
                "TLS needs both tls_cert and tls_key (PEM files); give both or neither"
            )
        return self

    @model_validator(mode="after")
    def _versions_unique(self) -> ServeSpec:
        seen: set[tuple[str, str]] = set()
        for model in self.models:
            key = (model.name, model.version)
            if key in seen:
                raise ValueError(
                    f"model {model.name!r} version {model.version!r} is listed twice; "
                    "give each version its own label"
                )
            seen.add(key)
        names = {m.name for m in self.models}
        for name in names:
            routed = [m for m in self.models if m.name == name and not m.shadow]
            if not routed or sum(m.weight for m in routed) <= 0:
                raise ValueError(
                    f"model {name!r} has no version with weight > 0 to route traffic to"
                )
        return self
