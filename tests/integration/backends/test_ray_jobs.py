"""Batch jobs through the Ray Jobs API of a local Ray cluster (with its dashboard)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kilowatt.backends import JobRequest
from kilowatt.backends.ray import RayBackend
from kilowatt.spec import Settings

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ray = pytest.importorskip("ray")
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def dashboard_url() -> Iterator[str]:
    context = ray.init(
        num_cpus=2,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=0,
        log_to_driver=False,
    )
    try:
        yield f"http://{context.dashboard_url}"
    finally:
        ray.shutdown()


def _finish(url: str, submission_id: str) -> tuple[str, str]:
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(url)
    deadline = time.monotonic() + 240  # bounds a broken run only
    while not (status := client.get_job_status(submission_id)).is_terminal():
        assert time.monotonic() < deadline, "the Ray job did not finish"
        time.sleep(0.5)
    return str(status.value), client.get_job_logs(submission_id)


def test_command_job_runs_with_the_store_urls(dashboard_url: str, tmp_path: Path) -> None:
    settings = Settings.from_env()
    command = ["sh", "-c", "echo store=$KILOWATT_STORE_URL user=$KILOWATT_USER"]
    job = JobRequest("command", {"name": "urls", "command": command}, str(tmp_path))
    submission = RayBackend(settings, dashboard_url=dashboard_url).submit(job)
    status, logs = _finish(dashboard_url, submission)
    assert status == "SUCCEEDED"
    assert f"store={settings.store_url} user=tester" in logs


def test_training_spec_runs_as_a_ray_job(dashboard_url: str, tmp_path: Path) -> None:
    spec = {
        "name": "ray-job",
        "model": "backends_ray_jobs:make_model",
        "dataset": "backends_ray_jobs:make_dataset",
        "training_step": "backends_ray_jobs:training_step",
        "steps": 4,
        "batch_size": 8,
        "device": "cpu",
        "checkpoint": {"url": str(tmp_path / "ckpt"), "every": "2"},
    }
    backend = RayBackend(Settings.from_env(), dashboard_url=dashboard_url)
    submission = backend.submit(JobRequest("train", spec, str(HERE)))
    status, logs = _finish(dashboard_url, submission)
    assert status == "SUCCEEDED", logs
    assert "kilowatt: trained steps 0..4" in logs
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir() if p.name.startswith("step-")) == [
        "step-000000002",
        "step-000000004",
    ]
