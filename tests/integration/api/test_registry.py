"""Models, versions, aliases, datasets, lineage and deployments over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from api_live import LiveApi
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from kilowatt.store import Store


@pytest.fixture
def trained(store: Store, tmp_path: Path) -> str:
    """A finished run that read a dataset and logged a weights artifact; its id."""
    run = store.create_run("p", name="trainer")
    store.log_dataset("mnist", version="1", fingerprint="f" * 64, run_id=run.id, num_rows=60_000)
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"weights")
    store.log_artifact(run.id, weights, name="w.pt")
    store.finish_run(run.id)
    return run.id


def test_register_alias_and_read_back_a_model(live_api: LiveApi, trained: str) -> None:
    with live_api.client() as client:
        for _ in range(2):
            created = client.post(
                "/api/v1/models/digits/versions", json={"run_id": trained, "artifact": "w.pt"}
            )
            assert created.status_code == 201
        moved = client.put("/api/v1/models/digits/aliases/production", json={"version": 1})
        moved_again = client.put("/api/v1/models/digits/aliases/production", json={"version": 2})
        models = client.get("/api/v1/models").json()
        versions = client.get("/api/v1/models/digits/versions").json()
        one = client.get("/api/v1/models/digits/versions/2").json()
    assert moved.json()["replaced"] is None
    assert moved_again.json()["replaced"] == 1
    assert models["items"] == [
        {"name": "digits", "versions": 2, "latest_version": 2, "aliases": {"production": 2}}
    ]
    assert [v["version"] for v in versions["items"]] == [2, 1]
    assert (one["run_id"], one["artifact"], one["aliases"]) == (trained, "w.pt", ["production"])


def test_model_errors_are_404_and_409(live_api: LiveApi, trained: str) -> None:
    with live_api.client() as client:
        unknown = client.get("/api/v1/models/nothing")
        client.post("/api/v1/models/m/versions", json={"run_id": trained, "artifact": "w.pt"})
        client.put("/api/v1/models/m/aliases/production", json={"version": 1})
        no_version = client.put("/api/v1/models/m/aliases/staging", json={"version": 7})
        refused = client.delete("/api/v1/models/m/versions/1")
        forced = client.delete("/api/v1/models/m/versions/1", params={"force": "true"})
    assert unknown.status_code == 404
    assert no_version.status_code == 404
    assert "its versions: [1]" in no_version.json()["detail"]
    assert refused.status_code == 409
    assert "alias:m@production" in refused.json()["detail"]
    assert forced.json() == {"deleted": "m:1", "dependents": ["alias:m@production"]}


def test_datasets_and_the_lineage_graph(live_api: LiveApi, trained: str) -> None:
    with live_api.client() as client:
        client.post("/api/v1/models/m/versions", json={"run_id": trained, "artifact": "w.pt"})
        datasets = client.get("/api/v1/datasets", params={"name": "mnist"}).json()
        one = client.get("/api/v1/datasets/mnist/1").json()
        graph = client.get("/api/v1/models/m/versions/1/lineage").json()
        run_graph = client.get(f"/api/v1/runs/{trained}/lineage").json()
        missing = client.get("/api/v1/lineage/dataset/999")
    assert [(d["name"], d["version"], d["num_rows"]) for d in datasets["items"]] == [
        ("mnist", "1", 60_000)
    ]
    assert one["fingerprint"] == "f" * 64
    kinds = {node["id"]: node["kind"] for node in graph["nodes"]}
    edges = {(kinds[e["source"]], e["relation"], kinds[e["target"]]) for e in graph["edges"]}
    assert edges == {("dataset", "input", "run"), ("run", "produced", "model_version")}
    assert run_graph["root"] == f"run:{trained}"
    assert missing.status_code == 404


@pytest.fixture
def serving_endpoint() -> Iterator[str]:
    """A real Prometheus endpoint exporting the serving engine's metric names."""
    registry = CollectorRegistry()
    latency = Histogram(
        "kilowatt_serve_request_latency_seconds", "latency", ["model", "version"],
        buckets=(0.01, 0.02, 0.05, 0.1), registry=registry,
    )  # fmt: skip
    requests = Counter("kilowatt_serve_requests", "requests", ["status"], registry=registry)
    for seconds in [0.015] * 90 + [0.07] * 10:  # 90 in (0.01, 0.02], 10 in (0.05, 0.1]
        latency.labels("m", "1").observe(seconds)
        requests.labels("200").inc()
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_deployments_with_latency_percentiles(
    live_api: LiveApi, trained: str, serving_endpoint: str
) -> None:
    with live_api.client() as client:
        client.post("/api/v1/models/m/versions", json={"run_id": trained, "artifact": "w.pt"})
        created = client.post(
            "/api/v1/deployments", json={"model": "m:1", "endpoint": serving_endpoint}
        ).json()
        updated = client.patch(f"/api/v1/deployments/{created['id']}", json={"status": "running"})
        listed = client.get("/api/v1/deployments", params={"status": "running"}).json()
        stats = client.get(f"/api/v1/deployments/{created['id']}/stats").json()
        missing = client.get("/api/v1/deployments/999")
    assert (created["model"], created["version"], created["status"]) == ("m", 1, "pending")
    assert updated.json()["status"] == "running"
    assert [d["id"] for d in listed["items"]] == [created["id"]]
    # p50: rank 50 of 90 in (0.01, 0.02] -> 0.01 + 0.01 * 50/90
    assert stats["latency_p50_s"] == pytest.approx(0.01 + 0.01 * 50 / 90)
    # p95: rank 95, 5 of 10 into (0.05, 0.1] -> 0.075
    assert stats["latency_p95_s"] == pytest.approx(0.075)
    assert stats["requests"] == 100
    assert stats["throughput_rps"] > 0
    assert missing.status_code == 404
    actions = [(e.actor, e.action) for e in live_api.store.list_audit(target="deployment:")]
    assert actions == [("tester", "deploy"), ("tester", "deploy.status")]


def test_stats_of_an_unreachable_endpoint_say_why(live_api: LiveApi, trained: str) -> None:
    with live_api.client() as client:
        client.post("/api/v1/models/m/versions", json={"run_id": trained, "artifact": "w.pt"})
        created = client.post(
            "/api/v1/deployments", json={"model": "m", "endpoint": "http://127.0.0.1:9"}
        ).json()
        response = client.get(f"/api/v1/deployments/{created['id']}/stats")
    assert response.status_code == 200
    assert response.json()["latency_p50_s"] is None
    assert response.json()["error"].startswith("cannot read http://127.0.0.1:9/metrics:")
