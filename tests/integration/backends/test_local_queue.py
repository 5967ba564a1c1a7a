"""The local job queue end to end: real processes started, stopped and retried by the worker."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import torch

from kilowatt.backends import JobRequest, LocalBackend
from kilowatt.backends.worker import LocalWorker, job_folder
from kilowatt.catalog import load_catalog
from kilowatt.spec import Settings
from kilowatt.spec.backend import CommandJobSpec
from kilowatt.store import Store, open_store
from kilowatt.units import carbon_gco2e

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the entry points and helpers next to this file

from event_log import attempts  # noqa: E402


@pytest.fixture
def store() -> Iterator[Store]:
    with open_store() as opened:
        yield opened


def _submit(name: str, command: str, workdir: Path, **backend: object) -> int:
    spec = CommandJobSpec(name=name, command=["sh", "-c", command], backend=backend)
    job = JobRequest("command", spec.model_dump(mode="json"), str(workdir))
    return int(LocalBackend().submit(job))


def _worker(store: Store, **options: object) -> LocalWorker:
    defaults: dict[str, object] = {"devices": [], "poll_interval_s": 0.02, "stop_grace_s": 0.5}
    return LocalWorker(store, Settings.from_env(), **{**defaults, **options})


def _tick_until(worker: LocalWorker, done: object, timeout_s: float = 60.0) -> None:
    # The timeout only bounds a broken run; a correct one finishes in well under a second.
    deadline = time.monotonic() + timeout_s
    while not done():  # type: ignore[operator]
        assert time.monotonic() < deadline, "the worker did not get there in time"
        worker.tick()
        time.sleep(0.02)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_higher_priority_runs_first(store: Store, tmp_path: Path) -> None:
    for name, priority in (("low", 0), ("high", 5), ("mid", 1), ("low2", 0)):
        _submit(name, f"echo {name} >> order.txt", tmp_path, priority=priority)
    _worker(store, max_parallel=1).run(until_idle=True)
    # equal priorities keep submission order
    assert (tmp_path / "order.txt").read_text().split() == ["high", "mid", "low", "low2"]
    assert {job.status for job in store.list_jobs()} == {"succeeded"}


def test_two_jobs_never_share_an_accelerator(store: Store, tmp_path: Path) -> None:
    record = (
        'echo "start $CUDA_VISIBLE_DEVICES" >> events; sleep 0.4; '
        'echo "end $CUDA_VISIBLE_DEVICES" >> events'
    )
    ids = [_submit(f"j{i}", record, tmp_path, accelerators=2) for i in range(4)]
    _worker(store, devices=["0", "1", "2", "3"], max_parallel=4).run(until_idle=True)
    held: set[str] = set()
    most_at_once = 0
    for line in (tmp_path / "events").read_text().splitlines():
        event, devices = line.split()
        assigned = set(devices.split(","))
        assert len(assigned) == 2
        if event == "start":
            assert not held & assigned, f"{assigned} handed out while {held} were held"
            held |= assigned
        else:
            held -= assigned
        most_at_once = max(most_at_once, len(held) // 2)
    # four devices, two per job: two ran side by side, never a third
    assert most_at_once == 2
    assert all(store.get_job(i).status == "succeeded" for i in ids)


def test_job_without_accelerators_sees_none(store: Store, tmp_path: Path) -> None:
    job_id = _submit("plain", 'echo "[$CUDA_VISIBLE_DEVICES] $OMP_NUM_THREADS" > env', tmp_path,
                     cpu_threads=3)  # fmt: skip
    _worker(store, devices=["0"]).run(until_idle=True)
    assert (tmp_path / "env").read_text().strip() == "[] 3"
    assert store.get_job(job_id).devices == []


def test_cancel_stops_the_job_and_its_children(store: Store, tmp_path: Path) -> None:
    # The child ignores SIGTERM, so only the worker's SIGKILL after the grace can stop it.
    command = '(trap "" TERM; sleep 300) & echo $! > child.pid; echo started; wait'
    job_id = _submit("long", command, tmp_path)
    worker = _worker(store)
    _tick_until(worker, lambda: (tmp_path / "child.pid").is_file())
    leader = store.get_job(job_id).pid
    assert leader is not None
    child = int((tmp_path / "child.pid").read_text())
    store.request_cancel(job_id)
    _tick_until(worker, lambda: store.get_job(job_id).status == "cancelled")
    assert _gone(leader) and _gone(child)
    job = store.get_job(job_id)
    assert job.error == "cancelled by request"
    assert store.open_artifact(job.run_id, "logs/attempt-1.log").read() == b"started\n"
    assert store.get_run(job.run_id).status == "killed"


def test_job_over_its_max_runtime_is_stopped_and_marked(store: Store, tmp_path: Path) -> None:
    job_id = _submit("slow", "sleep 300", tmp_path, max_runtime_s=0.3, max_attempts=3)
    worker = _worker(store)
    _tick_until(worker, lambda: store.get_job(job_id).status != "queued" and not worker.running)
    job = store.get_job(job_id)
    assert job.status == "timed_out"
    assert job.attempts == 1  # a timeout is not retried
    assert job.error == "stopped after max_runtime_s=0.3"
    assert job.time_s >= 0.3  # the attempt ran at least its limit before it was stopped


def test_failed_command_is_retried_then_marked_failed(store: Store, tmp_path: Path) -> None:
    job_id = _submit("flaky", "echo attempt $KILOWATT_JOB_ATTEMPT; exit 4", tmp_path,
                     max_attempts=2)  # fmt: skip
    _worker(store).run(until_idle=True)
    job = store.get_job(job_id)
    assert (job.status, job.attempts, job.exit_code) == ("failed", 2, 4)
    assert job.error == "exit code 4: attempt 2"
    logs = [a.name for a in store.list_artifacts(job.run_id)]
    assert logs == ["logs/attempt-1.log", "logs/attempt-2.log"]


def test_missing_program_fails_the_job_with_the_reason(store: Store, tmp_path: Path) -> None:
    spec = CommandJobSpec(name="nope", command=["/nonexistent/program"])
    job_id = int(LocalBackend().submit(JobRequest("command", spec.model_dump(), str(tmp_path))))
    _worker(store).run(until_idle=True)
    job = store.get_job(job_id)
    assert job.status == "failed"
    assert "cannot start job command ['/nonexistent/program']" in (job.error or "")


@pytest.mark.slow
def test_crashed_training_job_resumes_from_its_checkpoint(store: Store, tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    spec = {
        "name": "crashy",
        "project": "queue",
        "model": "backends_queue_jobs:make_model",
        "dataset": "backends_queue_jobs:make_dataset",
        "training_step": "backends_queue_jobs:training_step",
        "steps": 10,
        "batch_size": 8,
        "log_every": 1,
        "event_log": str(events),
        "device": "cpu",
        "price_usd_per_hour": 36.0,
        "checkpoint": {"every": "3", "asynchronous": False, "keep_last": 5},
        "backend": {"max_attempts": 2},
    }
    job_id = int(LocalBackend().submit(JobRequest("train", spec, str(HERE))))
    catalog = load_catalog()
    _worker(store, catalog=catalog, cpu_threads=1).run(until_idle=True)
    job = store.get_job(job_id)
    assert (job.status, job.attempts, job.exit_code) == ("succeeded", 2, 0), job.error
    run = store.get_run(job.run_id)
    # the second attempt started at the newest checkpoint before the crash (step 6)
    assert run.tags["start_step"] == "6"
    second = store.open_artifact(job.run_id, "logs/attempt-2.log").read().decode()
    assert "trained steps 6..10" in second
    # the first attempt died in step 8; the second ran 7..10 once each, and nothing before 6
    assert attempts(events) == [(0, [1, 2, 3, 4, 5, 6, 7]), (6, [7, 8, 9, 10])]

    # usage is the sum over both attempts, priced by the spec's price and the region's grid
    region = catalog.region("local")
    assert job.time_s > 0 and job.energy_j > 0
    assert job.cost_usd == pytest.approx(job.time_s * 36.0 / 3600)
    assert job.carbon_gco2e == pytest.approx(
        carbon_gco2e(job.energy_j, region.grid_intensity_gco2e_per_kwh, pue=region.pue)
    )
    assert (run.time_s, run.energy_j) == (pytest.approx(job.time_s), pytest.approx(job.energy_j))

    # and the weights equal those of an uninterrupted run
    assert _final_weights(job_folder(Settings.from_env(), job_id) / "checkpoints") == _reference(
        spec
    )


def _final_weights(folder: Path) -> dict[str, list[float]]:
    from kilowatt.train import CheckpointManager

    manager = CheckpointManager(str(folder))
    info = manager.latest()
    assert info is not None and info.step == 10
    state, _ = manager.load(info)
    assert state is not None
    return {k: v.flatten().tolist() for k, v in state["model"].items()}


def _reference(spec: dict[str, object]) -> dict[str, list[float]]:
    from kilowatt.spec import TrainSpec
    from kilowatt.train.entry import build_trainer

    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the queued job ran (cpu_threads=1)
    options = {k: v for k, v in spec.items() if k not in ("backend", "event_log")}
    reference = TrainSpec.model_validate(options)
    folder = Path(os.environ["KILOWATT_HOME"]) / "reference"
    checkpoint = {"url": str(folder), "every": "3", "asynchronous": False}
    trainer = build_trainer(
        reference, meter=None, progress=False, resume="never", checkpoint=checkpoint
    )
    try:
        trainer.fit()
    finally:
        torch.set_num_threads(threads)
    return _final_weights(folder)


def test_job_asking_for_more_devices_than_exist_fails_with_the_fix(
    store: Store, tmp_path: Path
) -> None:
    job_id = _submit("greedy", "true", tmp_path, accelerators=2)
    _worker(store, devices=["0"]).run(until_idle=True)
    job = store.get_job(job_id)
    assert job.status == "failed"
    assert job.error == (
        "a job asks for 2 accelerator(s) but this worker has 1 (['0']); lower "
        "backend.accelerators or add devices"
    )
