"""Training on a local Ray cluster: Ray Train workers running kilowatt's Trainer."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kilowatt.backends.ray import RayBackend
from kilowatt.backends.recorder import StoreRecorder
from kilowatt.spec import Settings
from kilowatt.store import open_store, start_run

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ray = pytest.importorskip("ray")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the entry points and helpers next to this file

from event_log import attempts  # noqa: E402
from ray_helpers import final_weights, local_weights, train_spec  # noqa: E402


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> list[float]:
    """The final weights of the same job trained with local torch.distributed workers."""
    folder = tmp_path_factory.mktemp("local-reference")
    return local_weights(train_spec("reference", folder), folder)


def test_two_worker_job_matches_the_local_result(
    local_ray: None, reference: list[float], tmp_path: Path
) -> None:
    settings = Settings.from_env()
    run = start_run("ray", name="ray-train", settings=settings)
    spec = train_spec("on-ray", tmp_path / "ckpt")
    result = RayBackend(settings).train(
        spec, callbacks=[StoreRecorder(run.id, settings)], workdir=str(HERE)
    )
    run.end()
    assert (result.steps, result.start_step) == (10, 0)
    assert result.samples == 10 * 8 * 2  # both workers' batches count
    assert final_weights(tmp_path / "ckpt") == pytest.approx(reference)
    # rank 0 in a Ray worker tracked into the store the driver uses
    with open_store(settings) as store:
        tags = store.get_run(run.id).tags
    assert (tags["world_size"], tags["start_step"]) == ("2", "0")


def test_killed_worker_resumes_from_checkpoint_with_the_same_weights(
    local_ray: None, reference: list[float], tmp_path: Path
) -> None:
    spec = train_spec(
        "killed",
        tmp_path / "ckpt",
        training_step="backends_ray_jobs:killing_training_step",
        backend={"kind": "ray", "ray": {"max_failures": 1}},
        event_log=str(tmp_path / "events.jsonl"),
    )
    result = RayBackend(Settings.from_env()).train(spec, workdir=str(HERE))
    home = Settings.from_env().home
    assert (home / "killed-once").is_file()  # a worker really was killed
    # the restarted group resumed from the step-3 checkpoint, not from scratch
    assert (result.start_step, result.steps) == (3, 10)
    # rank 0's log: the first group stopped within step 5 (rank 1 died in it); the restarted
    # group ran 4..10 once each and nothing before its checkpoint
    (first_start, first_steps), (second_start, second_steps) = attempts(tmp_path / "events.jsonl")
    assert (first_start, second_start) == (0, 3)
    assert first_steps == list(range(1, len(first_steps) + 1)) and 3 <= len(first_steps) <= 5
    assert second_steps == list(range(4, 11))
    assert final_weights(tmp_path / "ckpt") == pytest.approx(reference)


def test_failure_beyond_max_failures_is_reported(local_ray: None, tmp_path: Path) -> None:
    from kilowatt.errors import BackendError

    spec = train_spec(
        "fails",
        tmp_path / "ckpt",
        training_step="backends_ray_jobs:killing_training_step",
        backend={"kind": "ray", "ray": {"max_failures": 0}},
    )
    expected = r"(?s)failed after 0 restart\(s\).*worker.*max_failures"
    with pytest.raises(BackendError, match=expected):
        RayBackend(Settings.from_env()).train(spec, workdir=str(HERE))
