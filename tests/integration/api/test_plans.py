"""Plans over HTTP: a spec in (YAML or JSON), ranked configurations out."""

from __future__ import annotations

import pytest
import yaml
from api_live import LiveApi

from kilowatt.store import Store

# A small CPU workload on the built-in local instance: one fitting configuration.
SPEC = {
    "model": {"architecture": "generic", "params": 1.2e7, "forward_flops_per_sample": 1.8e9},
    "train": {"samples": 50_000, "epochs": 10, "precision": "fp32"},
    "constraints": {"instances": ["local-cpu"]},
}


@pytest.mark.parametrize("media_type", ["application/json", "application/yaml"])
def test_plan_returns_ranked_candidates_with_time_cost_energy(
    live_api: LiveApi, media_type: str
) -> None:
    from kilowatt.plan import make_plan

    expected = make_plan(SPEC).recommendation
    body = yaml.safe_dump(SPEC) if "yaml" in media_type else None
    with live_api.client() as client:
        if body is None:
            response = client.post("/api/v1/plans", json=SPEC)
        else:
            response = client.post(
                "/api/v1/plans", content=body, headers={"content-type": media_type}
            )
    assert response.status_code == 200
    result = response.json()
    best = result["candidates"][0]
    assert result["recommended"] == best["label"]
    assert best["label"].startswith("local-cpu · ")
    assert best["time_s"] == pytest.approx(expected.time_s)
    assert best["energy_j"] == pytest.approx(expected.energy_j)
    assert best["cost_usd"] == pytest.approx(expected.cost_usd)
    assert result["result"]["recommendation"]["instance"] == "local-cpu"


def test_viewer_may_plan_and_nothing_is_stored(live_api: LiveApi, store: Store) -> None:
    _, secret = store.create_token("reader", "viewer")
    events_before = len(store.list_audit(limit=1000))
    with live_api.client(secret) as client:
        response = client.post("/api/v1/plans", json=SPEC)
    assert response.status_code == 200
    assert len(store.list_audit(limit=1000)) == events_before


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"model: [unclosed", "the spec is not valid application/yaml"),
        (b"- a list", "the spec must be a mapping"),
        (b"model: {params: x}", "model.params: Input should be a valid number"),
        (b"colour: blue", "colour: unknown key; remove it or check its spelling"),
    ],
)
def test_bad_specs_are_422_naming_the_problem(live_api: LiveApi, body: bytes, message: str) -> None:
    with live_api.client() as client:
        response = client.post(
            "/api/v1/plans", content=body, headers={"content-type": "application/yaml"}
        )
    assert response.status_code == 422
    assert message in response.json()["detail"]
