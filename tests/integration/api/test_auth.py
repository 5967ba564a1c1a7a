"""Tokens and roles: viewers read, operators write, admins manage tokens and delete."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from api_live import LiveApi

from kilowatt.store import Store


@pytest.fixture
def tokens(store: Store) -> dict[str, str]:
    """One token per role, created the way `kilowatt token create` does."""
    return {
        role: store.create_token(f"ci-{role}", role)[1] for role in ("viewer", "operator", "admin")
    }


def test_once_a_token_exists_requests_without_one_get_401(
    live_api: LiveApi, tokens: dict[str, str]
) -> None:
    with live_api.client() as client:
        response = client.get("/api/v1/runs")
        assert client.get("/api/v1/health").json()["auth"] == "token"
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "requires a token" in response.json()["detail"]


def test_a_wrong_token_gets_401(live_api: LiveApi, tokens: dict[str, str]) -> None:
    with live_api.client("kw_not-a-real-token") as client:
        response = client.get("/api/v1/runs")
    assert response.status_code == 401
    assert "invalid or revoked token" in response.json()["detail"]


def test_viewer_reads_but_cannot_write(live_api: LiveApi, tokens: dict[str, str]) -> None:
    live_api.store.create_run("demo", name="seen")
    with live_api.client(tokens["viewer"]) as client:
        listed = client.get("/api/v1/runs")
        refused = client.post("/api/v1/runs", json={"project": "demo"})
    assert [run["name"] for run in listed.json()["items"]] == ["seen"]
    assert refused.status_code == 403
    assert refused.json() == {
        "detail": "token:ci-viewer has role viewer; this needs operator or above "
        "(ask an admin for a token with that role)",
        "error": "PermissionDenied",
    }
    assert len(live_api.store.list_runs("demo")) == 1


def test_operator_writes_and_the_audit_log_names_the_token(
    live_api: LiveApi, tokens: dict[str, str]
) -> None:
    with live_api.client(tokens["operator"]) as client:
        run = client.post("/api/v1/runs", json={"project": "p", "name": "r1"}).json()
        finished = client.post(f"/api/v1/runs/{run['id']}/finish", json={"status": "failed"})
        delete = client.delete(f"/api/v1/runs/{run['id']}")
        token_list = client.get("/api/v1/tokens")
    assert finished.json()["status"] == "failed"
    assert delete.status_code == 403  # deleting needs admin
    assert token_list.status_code == 403  # so does managing tokens
    events = live_api.store.list_audit(target=f"run:{run['id']}")
    assert [(e.actor, e.action) for e in events] == [
        ("token:ci-operator", "run.create"),
        ("token:ci-operator", "run.finish"),
    ]


def test_admin_deletes_and_manages_tokens(live_api: LiveApi, tokens: dict[str, str]) -> None:
    run = live_api.store.create_run("p")
    with live_api.client(tokens["admin"]) as client:
        deleted = client.delete(f"/api/v1/runs/{run.id}")
        created = client.post("/api/v1/tokens", json={"name": "bot", "role": "operator"})
        listed = client.get("/api/v1/tokens", params={"active": "true"}).json()
    assert deleted.json() == {"deleted": run.id, "dependents": []}
    assert created.status_code == 201
    assert created.json()["token"].startswith("kw_")
    assert "token" not in str(listed["items"][0].keys())
    assert sorted(t["name"] for t in listed["items"]) == [
        "bot",
        "ci-admin",
        "ci-operator",
        "ci-viewer",
    ]
    with live_api.client(created.json()["token"]) as client:
        assert client.get("/api/v1/whoami").json() == {"actor": "token:bot", "role": "operator"}


def test_a_revoked_token_stops_working_at_once(live_api: LiveApi, tokens: dict[str, str]) -> None:
    token_id, secret = live_api.store.create_token("leaving", "operator")
    with live_api.client(secret) as client:
        assert client.get("/api/v1/runs").status_code == 200
        with live_api.client(tokens["admin"]) as admin:
            revoked = admin.delete(f"/api/v1/tokens/{token_id}")
        after = client.get("/api/v1/runs")
    assert revoked.json()["active"] is False
    assert after.status_code == 401
    actions = [(e.actor, e.action) for e in live_api.store.list_audit(action="token.revoke")]
    assert actions == [("token:ci-admin", "token.revoke")]


def test_tokens_are_never_stored_in_plain_text(
    live_api: LiveApi, tokens: dict[str, str], store: Store
) -> None:
    with live_api.client(tokens["admin"]) as client:
        secret = client.post("/api/v1/tokens", json={"name": "x"}).json()["token"]
    database = store.engine.url.database
    assert database is not None
    with closing(sqlite3.connect(database)) as connection:
        dump = "\n".join(connection.iterdump())
    for plaintext in [*tokens.values(), secret]:
        assert plaintext not in dump
        assert plaintext[3:] not in dump
    # ... and the WAL file may hold pages not yet checkpointed: search the raw bytes too
    for path in (Path(database), Path(database + "-wal")):
        raw = path.read_bytes() if path.exists() else b""
        assert all(p.encode() not in raw for p in [*tokens.values(), secret])
