"""Run the HTTP server: one process, or several workers sharing the port.

Workers are started by uvicorn, each building its own app from the spec passed in the
environment (``KILOWATT_SERVE_SPEC``); their metrics go to a shared multiprocess folder so
``/metrics`` answers with totals over every worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
from collections.abc import Sequence
from typing import Any

from kilowatt.errors import MeterUnavailable, SpecError
from kilowatt.host import available_cores
from kilowatt.ports import announce, bound_url, hold_shared_port, listen
from kilowatt.serve.app import ServeApp, create_app, grpc_url
from kilowatt.serve.fleet import FLEET_ENV, Fleet
from kilowatt.serve.metrics import ServeMetrics
from kilowatt.serve.server import DeploymentEvent, InferenceServer, ServeCallback, notify
from kilowatt.spec.serve import ServeSpec

__all__ = ["SPEC_ENV", "run", "threads_per_worker", "worker_app"]

SPEC_ENV = "KILOWATT_SERVE_SPEC"
_ADMIN_ENV = "KILOWATT_SERVE_ADMIN"

_log = logging.getLogger(__name__)


def threads_per_worker(spec: ServeSpec, cpu_count: int | None = None) -> int:
    """CPU threads for torch in each worker: the spec's, else the cores shared evenly.

    >>> threads_per_worker(ServeSpec(models=[{"name": "m", "source": "m.pt"}], workers=2), 8)
    4
    >>> threads_per_worker(ServeSpec(models=[{"name": "m", "source": "m.pt"}]), 2)
    2
    """
    if spec.threads_per_worker is not None:
        return spec.threads_per_worker
    cores = cpu_count if cpu_count is not None else available_cores()
    # Measured on the 2-core reference machine: keeping a core free for the event loop
    # (1 torch thread) made a lone request 1.3x slower than an unbatched server, while using
    # every core made it 0.6x and kept throughput at 64 connections; the loop's parsing
    # fits between forward passes.
    return max(1, cores // spec.workers)


def _set_threads(count: int) -> None:
    import torch

    torch.set_num_threads(count)
    # One inter-op thread: the batcher already runs one forward pass at a time.
    if torch.get_num_interop_threads() != 1:
        # Settable once per process, before any parallel work; otherwise keep it.
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(1)


def _uvicorn_options(spec: ServeSpec) -> dict[str, Any]:
    import importlib.util

    # No host or port: uvicorn serves the socket ``run`` binds (``kilowatt.ports.listen``).
    options: dict[str, Any] = {
        "log_level": "warning",
        "timeout_graceful_shutdown": int(spec.drain_timeout_s),
        "access_log": False,
        "proxy_headers": False,  # nothing proxies a 127.0.0.1 server; saves a middleware hop
        "backlog": 4096,
    }
    if spec.tls_cert and spec.tls_key:
        options["ssl_certfile"] = spec.tls_cert
        options["ssl_keyfile"] = spec.tls_key
    # The C HTTP parser and event loop take a large share of per-request cost off Python.
    if importlib.util.find_spec("httptools"):
        options["http"] = "httptools"
    if importlib.util.find_spec("uvloop"):
        options["loop"] = "uvloop"
    return options


def worker_app() -> ServeApp:
    """App factory of one worker process (reads the spec from ``KILOWATT_SERVE_SPEC``)."""
    raw = os.environ.get(SPEC_ENV)
    if not raw:
        raise SpecError(f"{SPEC_ENV} is not set; start workers through kilowatt serve")
    spec = ServeSpec.model_validate_json(raw)
    _set_threads(threads_per_worker(spec))
    server = InferenceServer(spec, metrics=ServeMetrics(), meter=_default_meter())
    admin = os.environ.get(_ADMIN_ENV) == "1"
    app = create_app(server, max_body_bytes=spec.max_body_bytes, admin=admin)
    fleet_dir = os.environ.get(FLEET_ENV)
    if admin and fleet_dir:
        app.fleet = Fleet(fleet_dir, server)
    return app


class _MeterWhenReady:
    """This process's energy meter, built on a thread so that reading the catalog does not
    delay readiness; batches that run before it is built report no energy."""

    def __init__(self) -> None:
        self._meter: Any = None
        threading.Thread(target=self._build, name="energy-meter", daemon=True).start()

    def _build(self) -> None:
        try:
            from kilowatt.meter import EnergyMeter

            self._meter = EnergyMeter.for_this_process()
        except Exception:  # no reader on this machine: serve without energy figures
            _log.warning("no energy meter: serving without per-request energy", exc_info=True)

    def begin_window(self, key: str) -> None:
        if self._meter is None:
            raise MeterUnavailable("the energy meter is not ready yet")
        self._meter.begin_window(key)

    def end_window(self, key: str) -> Any:
        if self._meter is None:
            raise MeterUnavailable("the energy meter is not ready yet")
        return self._meter.end_window(key)


def _default_meter() -> Any:
    return _MeterWhenReady()


def run(
    spec: ServeSpec,
    *,
    callbacks: Sequence[ServeCallback] = (),
    meter: Any = None,
    admin: bool = False,
    server: InferenceServer | None = None,
) -> None:
    """Serve until SIGTERM or Ctrl-C, then drain: stop accepting, finish in-flight, exit.

    The socket is bound here, before uvicorn starts: port 0 becomes a free port, and the
    address is announced on stderr (``kilowatt serve: listening on URL``, see
    ``kilowatt.ports``) and to the callbacks'
    ``on_listening``, so whoever started the server learns its port from the server.

    Args:
        spec: models and server settings.
        callbacks: deployment hooks (one process only; with several workers they fire once
            in the parent, when the workers start).
        meter: energy meter; defaults to ``kilowatt.meter`` for this process.
        admin: expose the model repository routes (hot reload over HTTP).
        server: a prepared server (one process only).

    Raises:
        ServeError: the address cannot be bound (in use, or not this machine's).
    """
    import uvicorn

    if spec.tls_cert and spec.tls_key:
        from kilowatt.serve.grpc import read_tls_pair

        read_tls_pair(spec.tls_cert, spec.tls_key)  # a missing file is a clear error, at once
    options = _uvicorn_options(spec)
    listener = listen(spec.host, spec.port)
    _announce(bound_url(listener, spec.host, "https" if spec.tls_cert else "http"), callbacks)
    if spec.workers == 1:
        _set_threads(threads_per_worker(spec))
        server = server or InferenceServer(
            spec, callbacks=callbacks, meter=meter if meter is not None else _default_meter()
        )
        app = create_app(server, max_body_bytes=spec.max_body_bytes, admin=admin)
        uvicorn.Server(uvicorn.Config(app, **options)).run(sockets=[listener])
        return
    from uvicorn.supervisors import Multiprocess

    with (
        tempfile.TemporaryDirectory(prefix="kilowatt-metrics-") as metrics_dir,
        tempfile.TemporaryDirectory(prefix="kilowatt-fleet-") as fleet_dir,
        contextlib.ExitStack() as held,
    ):
        if spec.grpc_port == 0:  # every worker binds the one port this process holds
            shared = held.enter_context(hold_shared_port(spec.host))
            spec = spec.model_copy(update={"grpc_port": shared.getsockname()[1]})
            announce("serve", grpc_url(spec, spec.grpc_port))
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        os.environ[FLEET_ENV] = fleet_dir
        os.environ[SPEC_ENV] = spec.model_dump_json()
        os.environ[_ADMIN_ENV] = "1" if admin else "0"
        for model in spec.models:
            notify(callbacks, "on_deploy", DeploymentEvent("loaded", model))
        config = uvicorn.Config(
            "kilowatt.serve.runner:worker_app", factory=True, workers=spec.workers, **options
        )
        Multiprocess(config, sockets=[listener]).run()  # the workers share the socket


def _announce(url: str, callbacks: Sequence[ServeCallback]) -> None:
    announce("serve", url)
    notify(callbacks, "on_listening", url)
