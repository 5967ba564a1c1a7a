"""The server without HTTP: routing, A/B, stickiness, shadow, cache, hot reload, callbacks."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from kilowatt.serve import (
    DeadlineUnmeetable,
    DeploymentEvent,
    EngineClosed,
    InferenceServer,
    InvalidInput,
    ServeCallback,
    ServeMetrics,
    UnknownModel,
)
from kilowatt.serve.errors import ModelNotReady
from kilowatt.spec import ModelSpec, ServeSpec


class ScaleHandler:
    """y = x * factor, where the factor is the number after 'scale:' in the source."""

    input_shape = (2,)
    input_dtype = "FP32"

    def __init__(self, factor: float) -> None:
        self.factor = factor
        self.calls = 0

    def load(self) -> None:
        pass

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        return batch * self.factor


def _factory(spec: ModelSpec) -> ScaleHandler:
    return ScaleHandler(float(spec.source.removeprefix("scale:")))


def _server(*models: ModelSpec, **settings: Any) -> InferenceServer:
    spec = ServeSpec(models=list(models), **settings)
    metrics = ServeMetrics(CollectorRegistry())
    server = InferenceServer(spec, metrics=metrics, handler_factory=_factory)
    server.load()
    return server


def _sample(a: float = 1.0) -> np.ndarray:
    return np.array([a, 2 * a], dtype=np.float32)


def _metric(server: InferenceServer, name: str, **labels: str) -> float:
    return server.metrics.registry.get_sample_value(name, labels) or 0.0


def test_answers_with_the_model_output_and_counts_it() -> None:
    server = _server(ModelSpec(name="m", source="scale:3"))
    result = asyncio.run(server.infer("m", _sample(1.0)))
    assert result.outputs.tolist() == [[3.0, 6.0]]
    assert (result.model, result.version, result.cached) == ("m", "1", False)
    assert _metric(server, "kilowatt_serve_requests_total", model="m", version="1", status="200")
    server.close()


def test_unknown_model_and_version_name_what_exists() -> None:
    server = _server(ModelSpec(name="m", source="scale:1"))
    with pytest.raises(UnknownModel, match="no model named 'x'; served models: m"):
        asyncio.run(server.infer("x", _sample()))
    with pytest.raises(UnknownModel, match="no version '9'; served versions: 1"):
        asyncio.run(server.infer("m", _sample(), version="9"))
    server.close()


def test_wrong_shape_and_dtype_are_invalid_input() -> None:
    server = _server(ModelSpec(name="m", source="scale:1"))
    with pytest.raises(InvalidInput, match=r"input shape \[3\] does not match .*\[-1, 2\]"):
        asyncio.run(server.infer("m", np.zeros(3, dtype=np.float32)))
    with pytest.raises(InvalidInput, match="datatype int64 does not match"):
        asyncio.run(server.infer("m", np.zeros(2, dtype=np.int64)))
    assert _metric(server, "kilowatt_serve_requests_total", model="m", version="1", status="400")
    server.close()


def test_refusals_are_counted_by_their_cause() -> None:
    shed = "kilowatt_serve_shed_requests_total"
    server = _server(ModelSpec(name="m", source="scale:1"))
    engine = server.engine("m")
    with pytest.raises(DeadlineUnmeetable):  # a deadline already past cannot be met
        asyncio.run(server.infer("m", _sample(), deadline_s=-1.0))
    engine.ready = False  # as while a version still loads
    with pytest.raises(ModelNotReady):
        asyncio.run(server.infer("m", _sample()))
    engine.ready = True
    engine.close()  # the version shuts down while it is still routed to
    with pytest.raises(EngineClosed):
        asyncio.run(server.infer("m", _sample()))
    counted = {
        reason: _metric(server, shed, model="m", reason=reason)
        for reason in ("deadline", "not_ready", "closed", "queue_full")
    }
    assert counted == {"deadline": 1, "not_ready": 1, "closed": 1, "queue_full": 0}
    assert _metric(server, "kilowatt_serve_requests_total", model="m", version="1", status="503")
    server.close()


def test_weighted_split_is_within_tolerance_and_sticky_by_key() -> None:
    server = _server(
        ModelSpec(name="m", source="scale:1", version="a", weight=0.8),
        ModelSpec(name="m", source="scale:2", version="b", weight=0.2),
    )

    async def run() -> tuple[list[str], list[str]]:
        spread = [
            (await server.infer("m", _sample(), key=f"user-{i}")).version for i in range(2000)
        ]
        same = [(await server.infer("m", _sample(), key="user-7")).version for _ in range(50)]
        return spread, same

    spread, same = asyncio.run(run())
    # Binomial(2000, 0.2) has a standard deviation of 0.009; 0.04 is over 4 of them.
    assert spread.count("b") / len(spread) == pytest.approx(0.2, abs=0.04)
    assert len(set(same)) == 1
    server.close()


def test_shadow_gets_a_copy_but_never_changes_the_answer() -> None:
    server = _server(
        ModelSpec(name="m", source="scale:1", version="live"),
        ModelSpec(name="m", source="scale:5", version="candidate", shadow=True),
    )

    async def run() -> list[Any]:
        results = [await server.infer("m", _sample(float(i))) for i in range(1, 11)]
        while server._shadow_tasks:  # let the shadow copies finish
            await asyncio.sleep(0.01)
        return results

    results = asyncio.run(run())
    assert [r.version for r in results] == ["live"] * 10
    assert [r.outputs[0, 0] for r in results] == [float(i) for i in range(1, 11)]
    labels = {"model": "m", "version": "candidate"}
    assert (
        _metric(server, "kilowatt_serve_shadow_requests_total", outcome="disagree", **labels) == 10
    )
    assert _metric(server, "kilowatt_serve_shadow_latency_seconds_count", **labels) == 10
    server.close()


def test_cache_answers_repeats_without_running_the_model() -> None:
    server = _server(ModelSpec(name="m", source="scale:2"), cache_bytes=1 << 20)
    handler = server.engine("m").handler

    async def run() -> list[Any]:
        return [await server.infer("m", _sample(1.0)) for _ in range(3)]

    first, second, third = asyncio.run(run())
    assert (first.cached, second.cached, third.cached) == (False, True, True)
    assert second.outputs.tolist() == first.outputs.tolist() == [[2.0, 4.0]]
    assert handler.calls == 1 + 2  # two warm-up passes, then one real one
    assert _metric(server, "kilowatt_serve_cache_hits_total", model="m", version="1") == 2
    server.close()


def test_hot_reload_under_load_fails_no_request() -> None:
    server = _server(ModelSpec(name="m", source="scale:1", version="1"))
    failures: list[BaseException] = []
    versions: list[str] = []

    async def load() -> None:
        stop = time.monotonic() + 30
        while time.monotonic() < stop:
            batch = await asyncio.gather(
                *(server.infer("m", _sample()) for _ in range(8)), return_exceptions=True
            )
            for item in batch:
                if isinstance(item, BaseException):
                    failures.append(item)
                else:
                    versions.append(item.version)
            if versions[-8:] == ["2"] * 8 and swapped.is_set():
                return

    swapped = threading.Event()

    def swap() -> None:
        time.sleep(0.05)  # let traffic flow to version 1 first
        server.deploy(ModelSpec(name="m", source="scale:2", version="2"), weights={"2": 1.0})
        server.undeploy("m", "1")
        swapped.set()

    thread = threading.Thread(target=swap)
    thread.start()
    asyncio.run(load())
    thread.join(10)
    assert failures == []
    assert versions[0] == "1" and versions[-1] == "2"
    assert list(server.models()["m"]) == ["2"]
    server.close()


def test_callbacks_hear_deploy_and_undeploy() -> None:
    events: list[DeploymentEvent] = []

    class Recorder(ServeCallback):
        def on_deploy(self, event: DeploymentEvent) -> None:
            events.append(event)

        def on_undeploy(self, event: DeploymentEvent) -> None:
            events.append(event)

    spec = ServeSpec(models=[ModelSpec(name="m", source="scale:1")])
    server = InferenceServer(spec, callbacks=[Recorder()], handler_factory=_factory)
    server.load()
    asyncio.run(server.infer("m", _sample()))
    server.undeploy("m", "1")
    assert [(e.action, e.spec.name, e.spec.version, e.requests) for e in events] == [
        ("loaded", "m", "1", 0),
        ("unloaded", "m", "1", 1),
    ]


def test_a_failing_listening_callback_does_not_stop_the_start(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from kilowatt.serve.runner import _announce

    heard: list[str] = []

    class Broken(ServeCallback):
        def on_listening(self, url: str) -> None:
            raise RuntimeError("recorder down")

    class Recorder(ServeCallback):
        def on_listening(self, url: str) -> None:
            heard.append(url)

    _announce("http://127.0.0.1:8123", [Broken(), Recorder()])
    assert heard == ["http://127.0.0.1:8123"]  # the one after the failure still hears it
    assert "http://127.0.0.1:8123" in capsys.readouterr().err  # and it is announced


def test_set_weights_rejects_unknown_versions() -> None:
    server = _server(ModelSpec(name="m", source="scale:1"))
    with pytest.raises(UnknownModel, match=r"has no version\(s\) \['7'\]"):
        server.set_weights("m", {"7": 1.0})
    server.close()
