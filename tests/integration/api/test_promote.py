"""The promotion gate over HTTP: refusal is a 409 with the figures and leaves the alias;
a pass moves it; the optimize report of a version is readable."""

from __future__ import annotations

import pytest
from api_live import LiveApi

from kilowatt.store import Store


@pytest.mark.usefixtures("optimized_digits")
def test_promote_over_http(live_api: LiveApi, store: Store) -> None:
    url = "/api/v1/models/digits/aliases/production/promote"
    with live_api.client() as client:
        refused = client.post(url, json={"version": 3})
        after_refusal = client.get("/api/v1/models/digits").json()["aliases"]
        passed = client.post(url, json={"version": 2})
        after_pass = client.get("/api/v1/models/digits").json()["aliases"]
        variants = client.get("/api/v1/models/digits/versions/1/variants").json()
    assert refused.status_code == 409
    assert refused.json()["reasons"][0].startswith("accuracy 0.5000 vs holder 0.9600")
    assert after_refusal["production"] == 1
    assert passed.status_code == 200 and passed.json()["passed"]
    assert after_pass["production"] == 2
    assert [c["version"] for c in variants["candidates"]] == ["digits:1", "digits:2", "digits:3"]
    actions = [e.action for e in store.list_audit(limit=1000)]
    assert "model.promote.refused" in actions and "model.promote" in actions
