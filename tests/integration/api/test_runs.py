"""Runs over HTTP: filters, pages, metric histories (downsampled and full), artifacts."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from api_live import LiveApi

from kilowatt.store import Store


def _log_series(store: Store, run_id: str, key: str, values: list[float]) -> None:
    now = time.time()
    points = [(key, step, now + step, value) for step, value in enumerate(values)]
    store.log_metric_points(run_id, "w0", points)


def test_runs_filter_by_project_status_tag_and_param(live_api: LiveApi, store: Store) -> None:
    a = store.create_run("vision", name="a", params={"lr": 0.1}, tags={"team": "x"})
    store.create_run("vision", name="b", params={"lr": 0.2})
    store.create_run("nlp", name="c", params={"lr": 0.1})
    store.finish_run(a.id)
    with live_api.client() as client:

        def names(**query: object) -> list[str]:
            body = client.get("/api/v1/runs", params=query).json()
            return sorted(run["name"] for run in body["items"])

        assert names(project="vision") == ["a", "b"]
        assert names(status="finished") == ["a"]
        assert names(param="lr=0.1") == ["a", "c"]
        assert names(tag="team=x") == ["a"]
        assert names(project="vision", param="lr=0.1") == ["a"]


def test_runs_are_paginated_with_a_total(live_api: LiveApi, store: Store) -> None:
    for i in range(5):
        store.create_run("p", name=f"r{i}")
    with live_api.client() as client:
        page = client.get("/api/v1/runs", params={"limit": 2, "offset": 4}).json()
    assert (page["total"], page["limit"], page["offset"], len(page["items"])) == (5, 2, 4, 1)
    assert page["items"][0]["name"] == "r0"  # newest first: r0 is the oldest


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"limit": 0}, "query.limit: Input should be greater than or equal to 1"),
        ({"limit": "many"}, "query.limit: Input should be a valid integer"),
        ({"status": "paused"}, "query.status: Input should be 'running', 'finished'"),
        ({"tag": "no-equals-sign"}, "tag filter 'no-equals-sign' must look like key=value"),
    ],
)
def test_bad_query_parameters_give_422_with_a_message(
    live_api: LiveApi, query: dict[str, object], message: str
) -> None:
    with live_api.client() as client:
        response = client.get("/api/v1/runs", params=query)
    assert response.status_code == 422
    assert message in response.json()["detail"]


def test_unknown_run_is_404_naming_it(live_api: LiveApi) -> None:
    with live_api.client() as client:
        response = client.get("/api/v1/runs/0123456789abcdef")
    assert response.status_code == 404
    assert response.json()["error"] == "NotFound"
    assert "no run '0123456789abcdef'" in response.json()["detail"]
    assert "Traceback" not in response.text


def test_run_page_data_has_usage_summary_and_metric_keys(live_api: LiveApi, store: Store) -> None:
    run = store.create_run("p", params={"batch": 32})
    store.set_run_usage(run.id, time_s=10.0, energy_j=3600.0, cost_usd=0.02, method="estimated-tdp")
    _log_series(store, run.id, "loss", [1.0, 0.5, 0.25])
    _log_series(store, run.id, "system/power_w", [80.0, 82.0])
    with live_api.client() as client:
        body = client.get(f"/api/v1/runs/{run.id}").json()
        latest = client.get(f"/api/v1/runs/{run.id}/metrics").json()
    assert body["metric_keys"] == ["loss", "system/power_w"]
    assert body["summary"] == {
        "time_s": 10.0, "energy_j": 3600.0, "cost_usd": 0.02, "carbon_gco2e": None,
        "method": "estimated-tdp",
    }  # fmt: skip
    assert latest == {"loss": 0.25, "system/power_w": 82.0}


def test_long_metric_is_downsampled_keeping_the_spike(live_api: LiveApi, store: Store) -> None:
    run = store.create_run("p")
    values = [0.0] * 20_000
    values[12_345] = 99.0
    _log_series(store, run.id, "loss", values)
    with live_api.client() as client:
        small = client.get(f"/api/v1/runs/{run.id}/metrics/loss", params={"max_points": 200}).json()
        full = client.get(f"/api/v1/runs/{run.id}/metrics/loss", params={"full": "true"}).json()
    assert small["total_points"] == 20_000
    assert small["downsampled"] is True
    assert len(small["steps"]) <= 200
    assert 12_345 in small["steps"]
    assert max(small["values"]) == pytest.approx(99.0)
    assert full["downsampled"] is False
    assert full["steps"] == list(range(20_000))


def test_nan_metric_values_come_back_as_null(live_api: LiveApi, store: Store) -> None:
    run = store.create_run("p")
    _log_series(store, run.id, "loss", [1.0, float("nan"), 0.5])
    with live_api.client() as client:
        body = client.get(f"/api/v1/runs/{run.id}/metrics/loss").json()
    assert body["values"] == [1.0, None, 0.5]


def test_unknown_metric_key_is_404(live_api: LiveApi, store: Store) -> None:
    run = store.create_run("p")
    with live_api.client() as client:
        response = client.get(f"/api/v1/runs/{run.id}/metrics/accuracy")
    assert response.status_code == 404
    assert "has no metric 'accuracy'" in response.json()["detail"]


def test_metrics_logged_over_http_are_read_back(live_api: LiveApi) -> None:
    with live_api.client() as client:
        run = client.post("/api/v1/runs", json={"project": "p"}).json()
        for step, loss in enumerate([0.9, 0.7]):
            client.post(
                f"/api/v1/runs/{run['id']}/metrics", json={"step": step, "metrics": {"loss": loss}}
            )
        body = client.get(f"/api/v1/runs/{run['id']}/metrics/loss").json()
    assert body["steps"] == [0, 1]
    assert body["values"] == [0.9, 0.7]
    events = live_api.store.list_audit(action="run.metrics")
    assert [(e.actor, e.target, e.details["step"]) for e in events] == [
        ("tester", f"run:{run['id']}", 0),
        ("tester", f"run:{run['id']}", 1),
    ]


def test_artifacts_are_listed_and_downloaded_byte_for_byte(
    live_api: LiveApi, store: Store, tmp_path: Path
) -> None:
    run = store.create_run("p")
    weights = tmp_path / "model.bin"
    weights.write_bytes(bytes(range(256)) * 100)
    store.log_artifact(run.id, weights, name="ckpt/model.bin")
    with live_api.client() as client:
        listed = client.get(f"/api/v1/runs/{run.id}/artifacts").json()
        download = client.get(f"/api/v1/runs/{run.id}/artifacts/ckpt/model.bin")
        missing = client.get(f"/api/v1/runs/{run.id}/artifacts/nope.bin")
    assert [(a["path"], a["size_bytes"]) for a in listed["items"]] == [("ckpt/model.bin", 25_600)]
    assert download.content == weights.read_bytes()
    assert download.headers["content-disposition"] == 'attachment; filename="model.bin"'
    assert missing.status_code == 404
    assert "it has: ckpt/model.bin" in missing.json()["detail"]


def test_uploads_past_the_limit_are_refused_with_413(live_api: LiveApi, store: Store) -> None:
    run = store.create_run("p")
    limit = live_api.app.state.max_upload_bytes
    with live_api.client() as client:
        ok = client.post(
            f"/api/v1/runs/{run.id}/artifacts", params={"path": "notes.txt"}, content=b"hello"
        )
        too_big = client.post(
            f"/api/v1/runs/{run.id}/artifacts",
            params={"path": "big.bin"},
            content=b"x" * (limit + 1),
        )
    assert ok.status_code == 201
    assert ok.json()["size_bytes"] == 5
    assert too_big.status_code == 413
    assert f"exceeds the {limit}-byte limit" in too_big.json()["detail"]
    assert [a.name for a in store.list_artifacts(run.id)] == ["notes.txt"]
    uploads = store.list_audit(action="artifact.upload")
    assert [(e.actor, e.details["name"], e.details["size_bytes"]) for e in uploads] == [
        ("tester", "notes.txt", 5)
    ]
    assert store.verify_audit().ok


def test_chunked_upload_past_the_limit_is_refused(live_api: LiveApi, store: Store) -> None:
    run = store.create_run("p")
    limit = live_api.app.state.max_upload_bytes

    def body() -> object:  # a generator body is sent chunked, with no Content-Length
        for _ in range(limit // 65_536 + 2):
            yield b"x" * 65_536

    with live_api.client() as client:
        response = client.post(
            f"/api/v1/runs/{run.id}/artifacts", params={"path": "big.bin"}, content=body()
        )
    assert response.status_code == 413
    assert store.list_artifacts(run.id) == []


def test_a_nul_character_in_input_is_a_422_naming_it(live_api: LiveApi, store: Store) -> None:
    with live_api.client() as client:
        created = client.post("/api/v1/runs", json={"project": "a\x00b"})
        listed = client.get("/api/v1/runs", params={"tag": "team=\x00"})
        audit = client.get("/api/v1/audit", params={"actor": "\x00"})
    for response in (created, listed, audit):
        assert response.status_code == 422, response.text
        assert "contains a NUL character" in response.json()["detail"]
    assert store.list_runs() == []
