"""``kilowatt serve`` and ``kilowatt bench serve``.

``kilowatt serve ./mlp.pt --name mlp`` serves a file; ``kilowatt serve mlp@production``
serves a registered version, downloaded from the store, and records the deployment with
lineage to that version through the server's callbacks.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from kilowatt.errors import NotFound, SpecError

if TYPE_CHECKING:
    from kilowatt.serve import DeploymentEvent, ServeCallback
    from kilowatt.spec import ModelSpec, Settings

__all__ = ["register"]


def _is_handler_ref(ref: str) -> bool:
    module, sep, attr = ref.partition(":")
    if not sep or not attr.isidentifier() or not module:
        return False
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _is_file(ref: str) -> bool:
    return Path(ref).exists()


def _looks_like_path(ref: str) -> bool:
    """A folder in it, a leading ``.`` or ``~``, or a file extension: meant as a file."""
    return "/" in ref or "\\" in ref or ref.startswith((".", "~")) or bool(Path(ref).suffix)


def _missing_file(ref: str, could_be_name: bool) -> SpecError:
    if not could_be_name:
        return SpecError(f"{ref}: no such file; check the path")
    return SpecError(
        f"{ref}: no such file, and no model {ref!r} is registered; check the path, or list "
        "registered models with `kilowatt models list`"
    )


def _registry_spec(ref: str, settings: Settings, store: Any) -> ModelSpec:
    """Download a registered version's artifact and describe it as a ``ModelSpec``."""
    from kilowatt.spec import ModelSpec

    try:
        version = store.get_model_version(ref)
    except NotFound:
        if _looks_like_path(ref):  # meant as a file, though it could be a name too
            raise _missing_file(ref, could_be_name=True) from None
        raise
    if version.run_id is None or version.artifact_name is None:
        raise SpecError(f"model {version.ref} has no artifact to serve; register one with a file")
    folder = settings.home / "serve-cache" / (version.artifact_sha256 or version.ref)
    folder.mkdir(parents=True, exist_ok=True)
    path = store.download_artifact(version.run_id, version.artifact_name, folder)
    signature = version.signature or {}
    hints = {k: signature[k] for k in ("format", "factory", "input_dtype") if k in signature}
    if "input_shape" in signature:
        hints["input_shape"] = tuple(signature["input_shape"])
    return ModelSpec(name=version.name, version=str(version.version), source=str(path), **hints)


class _StoreRecorder:
    """Records each loaded version as a deployment (lineage: model version -> deployment)."""

    def __init__(self, store: Any, refs: dict[tuple[str, str], str]) -> None:
        self._store = store
        self._refs = refs
        self._endpoint = ""
        self._deployments: dict[tuple[str, str], int] = {}

    def on_listening(self, url: str) -> None:
        self._endpoint = url  # the bound address: a port of 0 resolved by the server

    def on_deploy(self, event: DeploymentEvent) -> None:
        key = (event.spec.name, event.spec.version)
        ref = self._refs.get(key)
        if ref is None:
            return  # served from a file: nothing in the registry to link to
        url = f"{self._endpoint}/v2/models/{event.spec.name}/versions/{event.spec.version}"
        self._deployments[key] = self._store.create_deployment(ref, url, status="running").id

    def on_undeploy(self, event: DeploymentEvent) -> None:
        deployment = self._deployments.pop((event.spec.name, event.spec.version), None)
        if deployment is not None:
            self._store.update_deployment(deployment, "stopped")


def _model_specs(
    models: list[str], name: str | None, weights: list[float] | None, options: dict[str, Any]
) -> tuple[list[ModelSpec], dict[tuple[str, str], str], Any]:
    from kilowatt.spec import ModelSpec, Settings

    if weights is not None and len(weights) != len(models):
        raise SpecError(f"--weights has {len(weights)} values for {len(models)} models")
    specs, refs, store = [], {}, None
    for index, ref in enumerate(models):
        weight = weights[index] if weights else 1.0
        if _is_file(ref) or _is_handler_ref(ref):
            label = name or Path(ref.partition(":")[0] if not _is_file(ref) else ref).stem
            version = str(index + 1)  # files have no version of their own: number them
            specs.append(
                ModelSpec(name=label, source=ref, version=version, weight=weight, **options)
            )
            continue
        from kilowatt.store import is_model_ref, open_store

        could_be_name = is_model_ref(ref)
        if _looks_like_path(ref) and not could_be_name:
            raise _missing_file(ref, could_be_name)
        if store is None:
            store = open_store(Settings.from_env())
        spec = _registry_spec(ref, Settings.from_env(), store)
        spec = spec.model_copy(update={"weight": weight, "name": name or spec.name})
        refs[(spec.name, spec.version)] = f"{spec.name}:{spec.version}" if not name else ref
        specs.append(spec)
    return specs, refs, store


def register(app: typer.Typer) -> None:
    _register_serve(app)
    _register_bench(app)


def _register_serve(app: typer.Typer) -> None:
    @app.command(no_args_is_help=True)
    def serve(
        models: list[str] = typer.Argument(
            None, help="model files, module:Class handlers, or registry refs NAME[:V|@alias]"
        ),
        name: str | None = typer.Option(None, help="model name (default: file stem)"),
        spec_file: Path | None = typer.Option(None, "--spec", help="a ServeSpec YAML file"),
        host: str = typer.Option("127.0.0.1", help="address to bind"),
        port: int = typer.Option(8080, help="TCP port (0 picks a free one)"),
        workers: int = typer.Option(1, help="server processes"),
        threads: int | None = typer.Option(None, help="torch threads per worker"),
        max_batch_size: int = typer.Option(64, help="most rows per forward pass"),
        max_queue_delay_ms: float = typer.Option(2.0, help="batch window when not adaptive"),
        fixed_window: bool = typer.Option(False, help="always wait the window (not adaptive)"),
        queue_capacity: int = typer.Option(1024, help="waiting requests before 429"),
        slo_ms: float = typer.Option(500.0, help="latency objective = default deadline"),
        timeout_s: float = typer.Option(30.0, help="hard per-request timeout"),
        cache_mb: float = typer.Option(0.0, help="response cache size (0 = off)"),
        weights: str | None = typer.Option(None, help="traffic split, e.g. 90,10"),
        shadow: str | None = typer.Option(None, help="a version that gets a copy of traffic"),
        format: str = typer.Option("auto", help="auto|torchscript|export|onnx|state_dict|handler"),
        factory: str | None = typer.Option(None, help="module:function for a state dict"),
        input_shape: str | None = typer.Option(None, help="shape of one sample, e.g. 3,32,32"),
        admin: bool = typer.Option(False, help="expose model repository routes (hot reload)"),
        grpc_port: int | None = typer.Option(
            None, help="also serve OIP over gRPC on this port (0 picks a free one)"
        ),
        tls_cert: Path | None = typer.Option(
            None, help="PEM certificate: serve HTTPS and gRPC+TLS"
        ),
        tls_key: Path | None = typer.Option(None, help="PEM private key of --tls-cert"),
    ) -> None:
        """Serve models over the Open Inference Protocol v2 and POST /predict."""
        from kilowatt.serve import run_server
        from kilowatt.spec import ServeSpec, load_spec

        settings: dict[str, Any] = {
            "host": host, "port": port, "workers": workers, "threads_per_worker": threads,
            "batching": {
                "max_batch_size": max_batch_size, "max_queue_delay_s": max_queue_delay_ms / 1e3,
                "adaptive": not fixed_window, "queue_capacity": queue_capacity,
            },
            "slo": {"latency_s": slo_ms / 1e3, "timeout_s": timeout_s},
            "cache_bytes": int(cache_mb * 1024 * 1024),
            "grpc_port": grpc_port,
            "tls_cert": str(tls_cert) if tls_cert else None,
            "tls_key": str(tls_key) if tls_key else None,
        }  # fmt: skip
        model_options = {"format": format, "factory": factory}
        if input_shape:
            model_options["input_shape"] = tuple(int(d) for d in input_shape.split(","))
        split = [float(w) for w in weights.split(",")] if weights else None
        refs: dict[tuple[str, str], str] = {}
        store = None
        if spec_file is not None:
            spec = load_spec(ServeSpec, spec_file)
        else:
            if not models:
                raise SpecError("name a model file, handler or registry ref, or pass --spec")
            all_refs = [*models, *([shadow] if shadow else [])]
            if split is not None and shadow:
                split = [*split, 0.0]  # the shadow takes no routed traffic
            specs, refs, store = _model_specs(all_refs, name, split, model_options)
            if shadow:
                specs[-1] = specs[-1].model_copy(update={"shadow": True, "weight": 0.0})
            spec = load_spec(ServeSpec, {"models": [s.model_dump() for s in specs], **settings})
        callbacks: list[ServeCallback] = []
        if store is not None:
            callbacks.append(_StoreRecorder(store, refs))
        grpc_note = f", gRPC on {spec.host}:{spec.grpc_port}" if spec.grpc_port is not None else ""
        typer.echo(
            f"serving {', '.join(f'{m.name}:{m.version}' for m in spec.models)} "
            f"with {spec.workers} worker(s){grpc_note}",
            err=True,
        )
        try:
            if spec.backend.kind == "ray":  # Ray Serve replicas run the same engine
                from kilowatt.backends import get_backend

                get_backend("ray", address=spec.backend.address).serve(spec, admin=admin)
            else:
                run_server(spec, callbacks=callbacks, admin=admin)
        finally:
            if store is not None:
                store.close()


def _bench_group(app: typer.Typer) -> typer.Typer:
    # Other concepts may add ``kilowatt bench <x>`` too: share one group.
    for group in app.registered_groups:
        if group.name == "bench" and group.typer_instance is not None:
            return group.typer_instance
    bench = typer.Typer(name="bench", help="Load tests and benchmarks.", no_args_is_help=True)
    app.add_typer(bench, name="bench")
    return bench


def _register_bench(app: typer.Typer) -> None:
    bench = _bench_group(app)

    @bench.command("serve", no_args_is_help=True)
    def bench_serve(
        url: str = typer.Argument(
            ...,
            help="http(s)://127.0.0.1:8080/predict, .../v2/models/M/infer or grpc(s)://host:port/M",
        ),
        scenario: str = typer.Option("sweep", help="single-stream|server|offline|sweep"),
        body_file: Path | None = typer.Option(None, "--body", help="request body file (JSON)"),
        features: int = typer.Option(256, help="floats per sample for the default body"),
        qps: float = typer.Option(100.0, help="target rate of the server scenario"),
        concurrency: str = typer.Option("1,16,64", help="closed-loop sweep concurrencies"),
        duration_s: float = typer.Option(10.0, help="seconds per run"),
        max_requests: int = typer.Option(100_000, help="most requests per run"),
        slo_ms: float = typer.Option(100.0, help="latency objective for SLO attainment"),
        json_out: Path | None = typer.Option(None, "--json", help="write results here"),
        seed: int = typer.Option(0, help="seed of the body and of Poisson arrivals"),
        ca_file: Path | None = typer.Option(None, help="PEM CA of an https/grpcs server"),
        grpc_stream: bool = typer.Option(
            False, help="gRPC: one ModelStreamInfer stream per connection, not unary calls"
        ),
    ) -> None:
        """Load-test a running server in the MLPerf LoadGen scenarios."""
        from kilowatt.bench.loadgen import LoadSpec, default_body, render_table, run_scenarios

        body = body_file.read_bytes() if body_file else default_body(url, features, seed)
        spec = LoadSpec(
            url=url,
            body=body,
            scenario=scenario,
            qps=qps,
            concurrencies=tuple(int(c) for c in concurrency.split(",")),
            duration_s=duration_s,
            max_requests=max_requests,
            slo_s=slo_ms / 1e3,
            seed=seed,
            ca_file=str(ca_file) if ca_file else None,
            grpc_stream=grpc_stream,
        )
        results = run_scenarios(spec)
        typer.echo(render_table(results))
        if json_out is not None:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps([r.to_dict() for r in results], indent=2))
            typer.echo(f"wrote {json_out}", err=True)
