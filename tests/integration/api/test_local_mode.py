"""With no token configured, local callers act as the settings' user with every right."""

from __future__ import annotations

from api_live import LiveApi


def test_health_says_local_mode_and_needs_no_token(live_api: LiveApi) -> None:
    with live_api.client() as client:
        response = client.get("/api/v1/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "auth": "local"}


def test_local_caller_writes_and_is_audited_as_the_settings_user(live_api: LiveApi) -> None:
    with live_api.client() as client:
        assert client.get("/api/v1/whoami").json() == {"actor": "tester", "role": "admin"}
        created = client.post("/api/v1/runs", json={"project": "demo", "params": {"lr": 0.1}})
        assert created.status_code == 201
        run = created.json()
        assert run["project"] == "demo"
        assert run["status"] == "running"
        assert run["params"] == {"lr": "0.1"}
        events = client.get("/api/v1/audit", params={"action": "run.create"}).json()["items"]
    assert [(e["actor"], e["target"]) for e in events] == [("tester", f"run:{run['id']}")]
