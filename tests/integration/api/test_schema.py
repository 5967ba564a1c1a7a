"""Property-based tests from the app's own OpenAPI document: no input gives a 500.

Every operation gets a few generated requests (valid and invalid) against a live server
over a store holding a run, a model version and a deployment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis
from api_live import LiveApi
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from kilowatt.store import Store

EXAMPLES_PER_OPERATION = 8


@pytest.fixture
def api_schema(live_api: LiveApi, store: Store, tmp_path: Path) -> Any:
    run = store.create_run("demo", params={"lr": 0.1})
    store.log_metric_points(
        run.id, "w", [("loss", step, 0.0, 1.0 / (step + 1)) for step in range(10)]
    )
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"w")
    store.log_artifact(run.id, weights)
    version = store.register_model("m", run_id=run.id, artifact="w.bin", aliases=["production"])
    store.create_deployment(version.ref, "http://127.0.0.1:9")
    return schemathesis.openapi.from_url(f"{live_api.base_url}/openapi.json")


@pytest.fixture
def admin_headers(store: Store) -> dict[str, str]:
    # With a token from the start, tokens the fuzzer creates do not change who may call.
    return {"Authorization": f"Bearer {store.create_token('fuzzer', 'admin')[1]}"}


def _fuzz(operation: Any, headers: dict[str, str], statuses: list[int]) -> None:
    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def run(case: schemathesis.Case) -> None:
        response = case.call(headers=headers, timeout=30)
        statuses.append(response.status_code)
        case.validate_response(response, checks=[not_a_server_error])

    run()


@pytest.mark.slow
def test_no_request_gives_a_server_error(api_schema: Any, admin_headers: dict[str, str]) -> None:
    failures: list[str] = []
    statuses: list[int] = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 30  # every route is in the schema
    for operation in operations:
        try:
            _fuzz(operation, admin_headers, statuses)
        except (Exception, BaseExceptionGroup) as exc:  # collect all failing operations
            failures.append(f"{operation.label}: {exc}")
    assert failures == []
    assert len(statuses) >= 2 * len(operations)
    assert {200, 404, 422} <= set(statuses)  # reached real data, missing ids and bad input
