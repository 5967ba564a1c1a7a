"""Submitting to the Ray Jobs API while a fresh cluster's job agent starts."""

from __future__ import annotations

from typing import Any

import pytest

from kilowatt.backends import ray as ray_backend
from kilowatt.errors import BackendError

STARTING = (
    "Request failed with status code 500: No available agent to submit job, please try again "
    "later.."
)


class _Client:
    """Answers ``errors`` in turn, then a submission id."""

    def __init__(self, *errors: str) -> None:
        self.errors = list(errors)
        self.calls: list[dict[str, Any]] = []

    def submit_job(self, **job: Any) -> str:
        self.calls.append(job)
        if self.errors:
            raise RuntimeError(self.errors.pop(0))
        return "raysubmit_1"


@pytest.fixture
def slept(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    waits: list[float] = []
    monkeypatch.setattr(ray_backend.time, "sleep", waits.append)
    return waits


def test_a_starting_job_agent_is_waited_for(slept: list[float]) -> None:
    client = _Client(STARTING, STARTING)
    assert ray_backend.submit_when_ready(client, "job", entrypoint="true") == "raysubmit_1"
    assert len(client.calls) == 3 and client.calls[-1] == {"entrypoint": "true"}
    assert slept == [0.5, 1.0]


def test_any_other_refusal_is_not_retried(slept: list[float]) -> None:
    client = _Client("Request failed with status code 400: bad runtime_env")
    with pytest.raises(BackendError, match=r"refused job 'job'.*bad runtime_env"):
        ray_backend.submit_when_ready(client, "job", entrypoint="true")
    assert len(client.calls) == 1 and slept == []


def test_an_agent_that_never_comes_up_ends_in_an_error(
    slept: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = iter(range(0, 1000, 20))  # each look at the clock is 20 s later
    monkeypatch.setattr(ray_backend.time, "monotonic", lambda: float(next(clock)))
    client = _Client(*[STARTING] * 10)
    with pytest.raises(BackendError, match="No available agent"):
        ray_backend.submit_when_ready(client, "job", entrypoint="true")
    assert 1 < len(client.calls) < 10
