"""The inference server without HTTP: models, versions, traffic splits, shadow and cache.

``InferenceServer`` owns one ``ModelEngine`` per model version and routes each request:
an explicit version if asked, else a weighted choice among the live versions (sticky when
the request carries a key). Shadow versions get a copy of the traffic; their answers are
compared with the served ones and discarded. The HTTP app (``kilowatt.serve.app``) and a
Ray Serve deployment both wrap this class.

>>> server = InferenceServer(spec)  # doctest: +SKIP
>>> server.load()  # doctest: +SKIP
>>> result = await server.infer("mlp", rows)  # doctest: +SKIP
>>> result.version, result.outputs.shape  # doctest: +SKIP
('1', (1, 10))
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kilowatt.errors import KilowattError
from kilowatt.serve.cache import ResponseCache, cache_key
from kilowatt.serve.engine import ModelEngine
from kilowatt.serve.errors import (
    EngineClosed,
    InvalidInput,
    UnknownModel,
    shed_reason_of,
    status_of,
)
from kilowatt.serve.handler import ModelHandler, load_handler
from kilowatt.serve.metrics import ServeMetrics
from kilowatt.serve.protocol import Tensors
from kilowatt.spec.serve import ModelSpec, ServeSpec

__all__ = ["DeploymentEvent", "InferResult", "InferenceServer", "ServeCallback", "notify"]

_log = logging.getLogger(__name__)

# Shadow answers within this tolerance of the served ones count as agreeing.
_SHADOW_ATOL = 1e-4
_SHADOW_RTOL = 1e-3


@dataclass(frozen=True)
class InferResult:
    """The answer to one request, and which version gave it."""

    outputs: Any
    model: str
    version: str
    cached: bool = False


@dataclass(frozen=True)
class DeploymentEvent:
    """A model version was loaded into or removed from the server.

    Attributes:
        action: ``loaded`` or ``unloaded``.
        spec: the version's spec (name, version, source, weight, shadow).
        load_s: seconds from load start to ready (``loaded`` only).
        requests: requests the version answered (``unloaded`` only).
    """

    action: str
    spec: ModelSpec
    load_s: float = 0.0
    requests: int = 0


class ServeCallback:
    """Hooks the composer plugs in (the CLI records deployments in the store through them).

    Subclass and override what you need; a failing callback is ignored, never fatal.
    """

    def on_listening(self, url: str) -> None:
        """The server's socket is bound at ``url`` (port 0 resolved); models load next."""

    def on_deploy(self, event: DeploymentEvent) -> None:
        """A version is loaded, warmed up and taking traffic."""

    def on_undeploy(self, event: DeploymentEvent) -> None:
        """A version stopped taking traffic and drained."""


@dataclass
class _Route:
    """The versions of one model name and how traffic is split between them."""

    engines: dict[str, ModelEngine] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    shadows: tuple[str, ...] = ()
    specs: dict[str, ModelSpec] = field(default_factory=dict)

    def pick(self, version: str | None, key: str | None, name: str) -> ModelEngine:
        if version is not None:
            engine = self.engines.get(version)
            if engine is None:
                raise UnknownModel(
                    f"model {name!r} has no version {version!r}; served versions: "
                    f"{', '.join(sorted(self.engines)) or 'none'}"
                )
            return engine
        live = [(v, w) for v, w in self.weights.items() if w > 0]
        if not live:
            raise UnknownModel(f"model {name!r} has no version taking traffic")
        if len(live) == 1:
            return self.engines[live[0][0]]
        # A key hashes to the same point in [0, 1) every time, so its version is sticky
        # for as long as the weights stay the same.
        point = _unit_hash(key) if key is not None else random.random()
        total = sum(w for _, w in live)
        acc = 0.0
        for v, w in live:
            acc += w / total
            if point < acc:
                return self.engines[v]
        return self.engines[live[-1][0]]


def _unit_hash(key: str) -> float:
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def notify(callbacks: Sequence[ServeCallback], hook: str, argument: object) -> None:
    """Call ``hook`` (``on_deploy``, ``on_listening``, ...) of each callback with
    ``argument``; a callback that fails is logged and skipped."""
    for callback in callbacks:
        try:
            getattr(callback, hook)(argument)
        except Exception:  # a recorder's failure must not stop serving
            _log.exception("serve callback %r failed in %s", callback, hook)


class InferenceServer:
    """Serves the models of a ``ServeSpec``, without any HTTP.

    Args:
        spec: models, batching, SLO and cache size.
        metrics: where to record metrics; a fresh registry when ``None``.
        callbacks: deployment hooks (e.g. a store-backed recorder).
        meter: optional ``kilowatt.meter`` energy meter for per-request energy.
        handler_factory: builds a handler from a ``ModelSpec`` (tests pass fakes).
    """

    def __init__(
        self,
        spec: ServeSpec,
        *,
        metrics: ServeMetrics | None = None,
        callbacks: Sequence[ServeCallback] = (),
        meter: Any = None,
        handler_factory: Callable[[ModelSpec], ModelHandler] = load_handler,
    ) -> None:
        self.spec = spec
        self.metrics = metrics if metrics is not None else ServeMetrics()
        self.callbacks = list(callbacks)
        self.meter = meter
        self._handler_factory = handler_factory
        self._routes: dict[str, _Route] = {}
        self._lock = threading.Lock()  # guards route changes (deploy / undeploy)
        self.cache = ResponseCache(spec.cache_bytes) if spec.cache_bytes > 0 else None
        self.ready = False
        self.draining = False
        self._shadow_tasks: set[asyncio.Task[None]] = set()
        self._answered: dict[tuple[str, str], int] = {}

    # -- lifecycle -------------------------------------------------------------------

    def load(self) -> None:
        """Load and warm up every model of the spec; the server is ready afterwards."""
        for model in self.spec.models:
            self.deploy(model)
        self.ready = True

    def deploy(self, model: ModelSpec, weights: dict[str, float] | None = None) -> ModelEngine:
        """Load a version and start routing to it; optionally set the model's new weights.

        Loading happens before the version joins the route, so requests never see a cold
        model (hot reload). Blocking: call it from a thread when a loop is running.
        """
        start = time.monotonic()
        engine = ModelEngine(
            model.name,
            model.version,
            self._handler_factory(model),
            self.spec.batching,
            timeout_s=self.spec.slo.timeout_s,
            on_batch=self.metrics.on_batch,
            meter=self.meter,
        )
        engine.load()
        with self._lock:
            route = self._routes.get(model.name) or _Route()
            old = route.engines.get(model.version)
            old_spec = route.specs.get(model.version)
            engines = {**route.engines, model.version: engine}
            new_weights = dict(route.weights)
            if model.shadow:
                new_weights.pop(model.version, None)
                shadows = tuple(sorted({*route.shadows, model.version}))
            else:
                new_weights[model.version] = model.weight
                shadows = tuple(v for v in route.shadows if v != model.version)
            if weights is not None:
                new_weights = dict(weights)
            # Replace the route object whole: a request mid-flight keeps a consistent view.
            self._routes[model.name] = _Route(
                engines, new_weights, shadows, {**route.specs, model.version: model}
            )
        if old is not None and old_spec is not None:
            self._retire(old, old_spec)
        self._notify("on_deploy", DeploymentEvent("loaded", model, time.monotonic() - start))
        return engine

    def set_weights(self, name: str, weights: dict[str, float]) -> None:
        """Shift traffic between loaded versions of a model (canary, A/B, cut-over)."""
        with self._lock:
            route = self._route(name)
            unknown = set(weights) - set(route.engines)
            if unknown:
                raise UnknownModel(f"model {name!r} has no version(s) {sorted(unknown)}")
            if sum(weights.values()) <= 0:
                raise InvalidInput("weights must give at least one version a share > 0")
            self._routes[name] = _Route(route.engines, dict(weights), route.shadows, route.specs)

    def undeploy(self, name: str, version: str, timeout_s: float = 30.0) -> None:
        """Stop routing to a version, let its queue drain, then unload it."""
        with self._lock:
            route = self._route(name)
            engine = route.engines.get(version)
            if engine is None:
                raise UnknownModel(f"model {name!r} has no version {version!r}")
            engines = {v: e for v, e in route.engines.items() if v != version}
            weights = {v: w for v, w in route.weights.items() if v != version}
            shadows = tuple(v for v in route.shadows if v != version)
            specs = {v: s for v, s in route.specs.items() if v != version}
            spec = route.specs[version]
            if engines:
                self._routes[name] = _Route(engines, weights, shadows, specs)
            else:
                del self._routes[name]
        self._retire(engine, spec, timeout_s)

    def _retire(self, engine: ModelEngine, spec: ModelSpec, timeout_s: float = 30.0) -> bool:
        drained = engine.close(timeout_s)
        answered = self._answered.get((engine.name, engine.version), 0)
        self._notify("on_undeploy", DeploymentEvent("unloaded", spec, requests=answered))
        return drained

    def close(self, timeout_s: float = 30.0) -> bool:
        """Refuse new requests, finish queued ones, stop every engine; True if all drained."""
        self.draining = True
        self.ready = False
        with self._lock:
            routes = list(self._routes.values())
            self._routes = {}
        drained = True
        for route in routes:
            for version, engine in route.engines.items():
                drained = self._retire(engine, route.specs[version], timeout_s) and drained
        return drained

    def _notify(self, hook: str, event: DeploymentEvent) -> None:
        notify(self.callbacks, hook, event)

    # -- requests --------------------------------------------------------------------

    def _route(self, name: str) -> _Route:
        route = self._routes.get(name)
        if route is None:
            served = ", ".join(sorted(self._routes)) or "none"
            raise UnknownModel(f"no model named {name!r}; served models: {served}")
        return route

    def only_model(self) -> str | None:
        """The model name when exactly one model is served, else ``None``."""
        routes = self._routes
        return next(iter(routes)) if len(routes) == 1 else None

    def models(self) -> dict[str, dict[str, ModelEngine]]:
        """Served engines by model name and version."""
        return {name: dict(route.engines) for name, route in self._routes.items()}

    def deployed(self, name: str) -> tuple[dict[str, ModelSpec], dict[str, float]]:
        """The spec of each served version of ``name``, and the traffic weights."""
        route = self._route(name)
        return dict(route.specs), dict(route.weights)

    def engine(self, name: str, version: str | None = None) -> ModelEngine:
        """The engine a request for ``name`` (and ``version``) would use, ignoring weights."""
        route = self._route(name)
        if version is not None:
            return route.pick(version, None, name)
        live = [v for v, w in route.weights.items() if w > 0] or list(route.engines)
        return route.engines[live[0]]

    async def infer(
        self,
        name: str,
        rows: Tensors,
        *,
        version: str | None = None,
        key: str | None = None,
        deadline_s: float | None = None,
        arrival_s: float | None = None,
    ) -> InferResult:
        """Answer one request of one or more rows.

        Args:
            name: model name.
            rows: input tensor (one sample, or samples stacked on axis 0); a dict of
                tensors by input name for a model with several inputs.
            version: a specific version; otherwise the traffic split decides.
            key: sticky routing key (same key, same version while weights hold).
            deadline_s: seconds this request may take; defaults to the SLO latency.
            arrival_s: ``time.monotonic()`` at arrival, when the caller measured it.

        Raises:
            UnknownModel, InvalidInput, Overloaded, RequestTimeout, ServeError.
        """
        if self.draining:
            raise EngineClosed("the server is shutting down; retry on another replica", 1.0)
        arrival_s = time.monotonic() if arrival_s is None else arrival_s
        budget_s = self.spec.slo.latency_s if deadline_s is None else deadline_s
        deadline = arrival_s + min(budget_s, self.spec.slo.timeout_s)
        route = self._route(name)
        engine = route.pick(version, key, name)
        labels = (name, engine.version)
        try:
            result = await self._infer_on(route, engine, rows, deadline, version, key)
        except KilowattError as exc:
            self._count(labels, str(status_of(exc)), arrival_s, exc)
            raise
        self._count((name, result.version), "200", arrival_s, None)
        return result

    async def _infer_on(
        self,
        route: _Route,
        engine: ModelEngine,
        rows: Tensors,
        deadline: float,
        version: str | None,
        key: str | None,
    ) -> InferResult:
        rows = engine.check_rows(rows)
        cache_id = None
        if self.cache is not None:
            cache_id = cache_key(engine.name, engine.version, rows)
            hit = self.cache.get(cache_id)
            if hit is not None:
                self.metrics.cache_hits.labels(engine.name, engine.version).inc()
                return InferResult(hit, engine.name, engine.version, cached=True)
            self.metrics.cache_misses.labels(engine.name, engine.version).inc()
        served = self._start_shadows(route, rows, deadline)
        in_flight = self.metrics.for_version(engine.name, engine.version).in_flight
        in_flight.inc()
        try:
            outputs, engine = await self._await_with_retry(engine, rows, deadline, version, key)
        except BaseException:
            if served is not None:
                served.cancel()
            raise
        finally:
            in_flight.dec()
        if served is not None:
            served.set_result(outputs)
        if cache_id is not None:
            self.cache.put(cache_id, outputs)  # type: ignore[union-attr]
        return InferResult(outputs, engine.name, engine.version)

    async def _await_with_retry(
        self,
        engine: ModelEngine,
        rows: Tensors,
        deadline: float,
        version: str | None,
        key: str | None,
    ) -> tuple[Any, ModelEngine]:
        try:
            return await self._await_engine(engine, rows, deadline), engine
        except EngineClosed:
            # The version was swapped out between routing and queueing (hot reload):
            # route again once, to whichever version replaced it.
            replacement = self._route(engine.name).pick(version, key, engine.name)
            if replacement is engine:
                raise
            return await self._await_engine(replacement, rows, deadline), replacement

    @staticmethod
    async def _await_engine(engine: ModelEngine, rows: Tensors, deadline: float) -> Any:
        # No timer per request: the batcher expires requests still queued at their
        # deadline, and its watchdog fails a batch whose forward pass overruns the timeout.
        return await engine.infer(rows, deadline)

    def _count(
        self, labels: tuple[str, str], status: str, arrival_s: float, error: Exception | None
    ) -> None:
        if error is None:
            children = self.metrics.for_version(*labels)
            children.ok.inc()
            children.latency.observe(time.monotonic() - arrival_s)
            self._answered[labels] = self._answered.get(labels, 0) + 1
            return
        self.metrics.requests.labels(*labels, status).inc()
        reason = shed_reason_of(error)
        if reason is not None:
            self.metrics.shed.labels(labels[0], reason).inc()

    # -- shadow traffic ----------------------------------------------------------------

    def _start_shadows(
        self, route: _Route, rows: Tensors, deadline: float
    ) -> asyncio.Future[Any] | None:
        if not route.shadows:
            return None
        served: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        for shadow_version in route.shadows:
            engine = route.engines[shadow_version]
            task = asyncio.ensure_future(self._shadow(engine, rows, deadline, served))
            self._shadow_tasks.add(task)  # keep a reference until it finishes
            task.add_done_callback(self._shadow_tasks.discard)
        return served

    async def _shadow(
        self, engine: ModelEngine, rows: Tensors, deadline: float, served: asyncio.Future[Any]
    ) -> None:
        labels = (engine.name, engine.version)
        start = time.monotonic()
        try:
            shadow_out = await engine.infer(rows, deadline)
        except Exception:  # a shadow's failure is recorded, never seen by clients
            self.metrics.shadow.labels(*labels, "error").inc()
            return
        self.metrics.shadow_latency.labels(*labels).observe(time.monotonic() - start)
        try:
            served_out = await served
        except asyncio.CancelledError:  # the served request failed: nothing to compare
            self.metrics.shadow.labels(*labels, "unmatched").inc()
            return
        outcome = "agree" if _outputs_agree(served_out, shadow_out) else "disagree"
        self.metrics.shadow.labels(*labels, outcome).inc()


def _outputs_agree(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_outputs_agree(a[k], b[k]) for k in a)
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_outputs_agree(x, y) for x, y in zip(a, b, strict=True))
    x, y = np.asarray(a), np.asarray(b)
    return x.shape == y.shape and bool(np.allclose(x, y, rtol=_SHADOW_RTOL, atol=_SHADOW_ATOL))
