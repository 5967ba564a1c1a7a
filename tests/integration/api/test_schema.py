"""Property-based tests from the app's own OpenAPI document: no input gives a 5xx.

Every operation gets a bounded number of generated requests, valid (positive) and invalid
(negative), as an admin, an operator, a viewer and a caller without a token, against a
live server over a store holding a run, a model version and a deployment. Invalid input
must be refused with a 4xx, never answered with a 2xx or a 5xx.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from api_live import LiveApi
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import negative_data_rejection

from kilowatt.store import Store

ROLES = ["admin", "operator", "viewer"]
# Examples per operation, per caller: bounded so the whole matrix stays well under a minute.
EXAMPLES = {GenerationMode.POSITIVE: 4, GenerationMode.NEGATIVE: 4}
PUBLIC = {"GET /api/v1/health"}


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
def tokens(store: Store) -> dict[str, str]:
    # With tokens from the start, tokens the fuzzer creates do not change who may call.
    return {role: store.create_token(f"fuzz-{role}", role)[1] for role in ROLES}


def _fuzz(
    operation: Any, mode: GenerationMode, headers: dict[str, str], statuses: list[int]
) -> None:
    checks = [not_a_server_error]
    if mode is GenerationMode.NEGATIVE:
        checks.append(negative_data_rejection)  # invalid input must get a 4xx, never a 2xx

    # The token is a fixed header, so negative cases never "drop" it only to have it added
    # back by the caller (that would count a valid request as an accepted invalid one).
    @given(case=operation.as_strategy(generation_mode=mode, headers=headers or None))
    @settings(
        max_examples=EXAMPLES[mode],
        # a hang guard, not a speed test: one request past this fails the example
        deadline=timedelta(seconds=60),
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def run(case: schemathesis.Case) -> None:
        response = case.call(timeout=30)
        statuses.append((operation.label, response.status_code))
        case.validate_response(response, checks=checks)

    run()


@pytest.mark.slow
@pytest.mark.parametrize("caller", [*ROLES, None], ids=[*ROLES, "no-token"])
@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda m: m.value)
def test_no_request_gives_a_server_error(
    api_schema: Any, tokens: dict[str, str], caller: str | None, mode: GenerationMode
) -> None:
    headers = {"Authorization": f"Bearer {tokens[caller]}"} if caller else {}
    failures: list[str] = []
    statuses: list[tuple[str, int]] = []
    unfalsifiable: list[str] = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 30  # every route is in the schema
    for operation in operations:
        try:
            _fuzz(operation, mode, headers, statuses)
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE, operation.label
            # no constrained input (none, or free strings only): no invalid request exists
            unfalsifiable.append(operation.label)
        except (Exception, BaseExceptionGroup) as exc:  # collect all failing operations
            failures.append(f"{operation.label}: {exc}")
    assert failures == [], "\n\n".join(failures)
    assert len(operations) - len(unfalsifiable) >= 20, unfalsifiable  # most take checked input
    assert len(statuses) >= len(operations) - len(unfalsifiable)
    assert [(label, status) for label, status in statuses if status >= 500] == []
    answered = {label for label, status in statuses if status < 300}
    if caller is None:
        assert answered <= PUBLIC  # nothing protected answers without a token
    elif mode is GenerationMode.POSITIVE:
        assert {200, 404} <= {status for _, status in statuses}  # real data and missing ids
