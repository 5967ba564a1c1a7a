"""Every route against every role: the lowest role each route admits, as a table.

The table must list every route the app has, so a new route cannot ship without a
decision about who may call it. Calls go to ids that do not exist: an admitted caller gets
404 or 422 (past the gate), a refused one gets 403, a caller without a token 401; a 5xx
for anyone is a failure. The routes outside the OpenAPI document (the dashboard page, the
API explorer, the OpenAPI document itself and every static file) are public and checked
the same way.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from api_live import LiveApi
from starlette.routing import Mount, Route

import kilowatt.api
from kilowatt.store import Store

V, OP, A = "viewer", "operator", "admin"
RUN = "f" * 32

# (method, route template, lowest role admitted)
ROUTES: list[tuple[str, str, str]] = [
    ("GET", "/api/v1/whoami", V),
    ("GET", "/api/v1/runs", V),
    ("GET", "/api/v1/runs/{run_id}", V),
    ("GET", "/api/v1/runs/{run_id}/metrics", V),
    ("GET", "/api/v1/runs/{run_id}/metrics/{key}", V),
    ("GET", "/api/v1/runs/{run_id}/artifacts", V),
    ("GET", "/api/v1/runs/{run_id}/artifacts/{path}", V),
    ("GET", "/api/v1/runs/{run_id}/lineage", V),
    ("POST", "/api/v1/runs", OP),
    ("POST", "/api/v1/runs/{run_id}/metrics", OP),
    ("POST", "/api/v1/runs/{run_id}/artifacts", OP),
    ("POST", "/api/v1/runs/{run_id}/finish", OP),
    ("DELETE", "/api/v1/runs/{run_id}", A),
    ("GET", "/api/v1/models", V),
    ("GET", "/api/v1/models/{name}", V),
    ("GET", "/api/v1/models/{name}/versions", V),
    ("GET", "/api/v1/models/{name}/versions/{version}", V),
    ("GET", "/api/v1/models/{name}/versions/{version}/lineage", V),
    ("GET", "/api/v1/models/{name}/versions/{version}/variants", V),
    ("POST", "/api/v1/models/{name}/versions", OP),
    ("PUT", "/api/v1/models/{name}/aliases/{alias}", OP),
    ("DELETE", "/api/v1/models/{name}/aliases/{alias}", OP),
    ("POST", "/api/v1/models/{name}/aliases/{alias}/promote", OP),
    ("DELETE", "/api/v1/models/{name}/versions/{version}", A),
    ("GET", "/api/v1/datasets", V),
    ("GET", "/api/v1/datasets/{name}/{version}", V),
    ("GET", "/api/v1/lineage/{kind}/{node_id}", V),
    ("GET", "/api/v1/projects", V),
    ("GET", "/api/v1/deployments", V),
    ("GET", "/api/v1/deployments/{deployment_id}", V),
    ("GET", "/api/v1/deployments/{deployment_id}/stats", V),
    ("POST", "/api/v1/deployments", OP),
    ("PATCH", "/api/v1/deployments/{deployment_id}", OP),
    ("GET", "/api/v1/audit", V),
    ("GET", "/api/v1/audit/verify", V),
    ("GET", "/api/v1/tokens", A),
    ("POST", "/api/v1/tokens", A),
    ("DELETE", "/api/v1/tokens/{token_id}", A),
    ("GET", "/api/v1/totals", V),
    ("POST", "/api/v1/plans", V),
    ("GET", "/metrics", V),
]
PUBLIC = {("GET", "/api/v1/health")}
# Routes the OpenAPI document leaves out; every caller gets them (the dashboard asks for a
# token itself, in the page, before calling the API).
PAGES = {"/", "/docs", "/openapi.json"}
STATIC_DIR = Path(kilowatt.api.__file__).parent / "ui" / "static"
STATIC_FILES = sorted(
    f"/static/{p.relative_to(STATIC_DIR).as_posix()}" for p in STATIC_DIR.rglob("*") if p.is_file()
)

# Path values that name nothing in the store.
MISSING = {
    "run_id": RUN, "key": "loss", "path": "x.bin", "name": "nomodel", "version": "1",
    "alias": "production", "kind": "run", "node_id": RUN, "deployment_id": "999999",
    "token_id": "nosuchtoken",
}  # fmt: skip
ORDER = [V, OP, A]


def _url(template: str) -> str:
    url = template
    for name, value in MISSING.items():
        url = url.replace("{" + name + "}", value)
    return url


def test_the_table_lists_every_route(live_api: LiveApi) -> None:
    documented = {
        (method.upper(), path)
        for path, operations in live_api.app.openapi()["paths"].items()
        for method in operations
    }
    assert documented == {(m, p) for m, p, _ in ROUTES} | PUBLIC


@pytest.fixture
def role_tokens(store: Store) -> dict[str, str]:
    return {role: store.create_token(f"r-{role}", role)[1] for role in ORDER}


def _expected(role: str | None, lowest: str) -> str:
    if role is None:
        return "401"
    return "403" if ORDER.index(role) < ORDER.index(lowest) else "admitted"


def _outcome(status: int) -> str:
    if status >= 500:
        return f"server error {status}"
    return str(status) if status in (401, 403) else "admitted"


def test_each_role_is_admitted_or_refused_as_the_table_says(
    live_api: LiveApi, role_tokens: dict[str, str]
) -> None:
    # One server for the whole table: (route, caller) -> outcome, compared at once.
    callers: dict[str | None, str | None] = {None: None, **role_tokens}
    seen, expected = {}, {}
    for role, token in callers.items():
        with live_api.client(token) as client:
            for method, template, lowest in ROUTES:
                status = client.request(method, _url(template)).status_code
                seen[(method, template, role)] = _outcome(status)
                expected[(method, template, role)] = _expected(role, lowest)
    assert seen == expected


def test_a_refusal_names_the_role_needed(live_api: LiveApi, role_tokens: dict[str, str]) -> None:
    with live_api.client(role_tokens[OP]) as client:
        response = client.delete(f"/api/v1/runs/{RUN}")
    assert response.json()["detail"] == (
        "token:r-operator has role operator; this needs admin or above "
        "(ask an admin for a token with that role)"
    )


def test_the_routes_outside_the_openapi_document_are_the_listed_ones(live_api: LiveApi) -> None:
    hidden = {
        route.path
        for route in live_api.app.routes
        if isinstance(route, Route) and not route.include_in_schema
    }
    mounts = {route.path for route in live_api.app.routes if isinstance(route, Mount)}
    assert (hidden, mounts) == (PAGES, {"/static"})
    assert len(STATIC_FILES) >= 10 and "/static/app.js" in STATIC_FILES


def test_pages_and_static_files_answer_every_caller(
    live_api: LiveApi, role_tokens: dict[str, str]
) -> None:
    callers: dict[str | None, str | None] = {None: None, **role_tokens}
    seen, expected = {}, {}
    for role, token in callers.items():
        with live_api.client(token) as client:
            for path in [*sorted(PAGES), *STATIC_FILES]:
                seen[(path, role)] = client.get(path).status_code
                expected[(path, role)] = 200
            for missing in ("/static/nope.js", "/static/../app.py", "/nope"):
                seen[(missing, role)] = client.get(missing).status_code
                expected[(missing, role)] = 404
    assert seen == expected
