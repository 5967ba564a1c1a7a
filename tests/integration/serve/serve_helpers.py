"""Helpers of the serving tests: in-process uvicorn on port 0, `kilowatt serve` processes
(through the same ``ServerProcess`` the quickstart uses), small models and a gated fake
model."""

from __future__ import annotations

import ssl
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import uvicorn
from prometheus_client import CollectorRegistry

from kilowatt.serve import InferenceServer, ServeMetrics, create_app
from kilowatt.serve.process import ServerProcess
from kilowatt.spec import ModelSpec, ServeSpec

REPO = Path(__file__).resolve().parents[3]


def small_mlp() -> torch.nn.Module:
    """The reference MLP's shape, shrunk so tests stay fast."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)
    ).eval()


class TwoInputs(torch.nn.Module):
    """A model with two named inputs of different dtypes and two named outputs."""

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> dict[str, torch.Tensor]:
        total = x.sum(dim=1, keepdim=True) * scale.to(torch.float32)
        return {"total": total, "peak": x.max(dim=1, keepdim=True).values}


#: The inputs of ``TwoInputs``, as a ``ModelSpec`` declares them.
TWO_INPUTS = (
    {"name": "x", "shape": (4,), "datatype": "FP32"},
    {"name": "scale", "shape": (1,), "datatype": "INT64"},
)


def save_torchscript(module: torch.nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():  # deprecated upstream, still a format users ship
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(module).save(str(path))
    return path


class Gate:
    """A handler factory whose models block each batch, once armed, until the gate opens.

    ``source: scale:K`` makes a model that multiplies its input by K.
    """

    def __init__(self) -> None:
        self.armed = False  # warm-up passes run before the test arms the gate
        self.open = threading.Event()
        self.started = threading.Event()
        self.batches: list[int] = []

    def __call__(self, spec: ModelSpec) -> Any:
        return _GatedHandler(self, float(spec.source.removeprefix("scale:")))


class _GatedHandler:
    input_shape = (2,)
    input_dtype = "FP32"

    def __init__(self, gate: Gate, factor: float) -> None:
        self.gate, self.factor = gate, factor

    def load(self) -> None:
        pass

    def predict(self, batch: np.ndarray) -> np.ndarray:
        if self.gate.armed:
            self.gate.batches.append(len(batch))
            self.gate.started.set()
            assert self.gate.open.wait(30)
        return batch * self.factor


@contextmanager
def running(server: InferenceServer, **app_options: Any) -> Iterator[str]:
    """Serve ``server`` on 127.0.0.1:<free port> in this process; yield its base URL."""
    with _running_app(create_app(server, **app_options)) as url:
        yield url


@contextmanager
def running_with_grpc(server: InferenceServer, **app_options: Any) -> Iterator[tuple[str, str]]:
    """``running``, for a spec with ``grpc_port=0``: yield (base URL, gRPC ``host:port``),
    the port being the one the gRPC server bound."""
    app = create_app(server, **app_options)
    with _running_app(app) as url:
        yield url, f"127.0.0.1:{app.api.state.grpc_endpoint.port}"


@contextmanager
def _running_app(app: Any) -> Iterator[str]:
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    web = uvicorn.Server(config)
    thread = threading.Thread(target=web.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not web.started:  # set once the socket listens and the models are loaded
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        port = web.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        web.should_exit = True
        thread.join(30)


def make_server(
    *models: ModelSpec, factory: Callable[[ModelSpec], Any] | None = None, **settings: Any
) -> InferenceServer:
    spec = ServeSpec(models=list(models), **settings)
    options: dict[str, Any] = {"metrics": ServeMetrics(CollectorRegistry())}
    if factory is not None:
        options["handler_factory"] = factory
    return InferenceServer(spec, **options)


def metric(server: InferenceServer, name: str, **labels: str) -> float:
    return server.metrics.registry.get_sample_value(name, labels) or 0.0


@contextmanager
def serve_process(
    args: list[str], env: dict[str, str] | None = None, verify: ssl.SSLContext | bool = True
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Run ``kilowatt serve ARGS`` on the port it picks; yield (base URL, process) once ready.

    With ``--tls-cert`` in ARGS the URL is https, checked with the SSL context ``verify``.
    """
    with tempfile.TemporaryDirectory(prefix="kilowatt-serve-test-") as folder:
        log_path = Path(folder) / "serve.log"
        with ServerProcess(
            args, log_path=log_path, env=env, ready_timeout_s=90, verify=verify
        ) as server:
            assert server.process is not None
            yield server.endpoint, server.process
