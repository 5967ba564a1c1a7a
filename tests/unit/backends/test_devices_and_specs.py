"""Device assignment, the backend section of specs, and reading job files."""

from __future__ import annotations

from pathlib import Path

import pytest

from kilowatt.backends import DevicePool, JobRequest, detect_devices, get_backend, read_job_file
from kilowatt.backends.worker import EXIT_PREEMPTED
from kilowatt.errors import SpecError
from kilowatt.spec import TrainSpec
from kilowatt.spec.backend import BackendSpec, CommandJobSpec, RayOptions

_TRAIN = {"name": "t", "model": "m:f", "dataset": "m:d", "loss": "m:l"}


def test_pool_hands_out_free_devices_exclusively() -> None:
    pool = DevicePool(["0", "1", "2"])
    assert pool.acquire(1, 2) == ["0", "1"]
    # only one device is left, so a second pair must wait
    assert pool.acquire(2, 2) is None
    assert pool.acquire(3, 1) == ["2"]
    assert pool.free == []
    pool.release(1)
    assert pool.acquire(2, 2) == ["0", "1"]
    assert pool.held_by(3) == ["2"]


def test_pool_refuses_what_it_can_never_give() -> None:
    with pytest.raises(SpecError, match=r"asks for 3 accelerator\(s\) but this worker has 2"):
        DevicePool(["0", "1"]).acquire(1, 3)


def test_pool_refuses_a_device_listed_twice() -> None:
    with pytest.raises(SpecError, match="names a device twice"):
        DevicePool(["0", "0"])


@pytest.mark.parametrize(
    ("visible", "expected"),
    [
        ("2,3", ["2", "3"]),  # the scheduler's choice is respected
        ("", []),  # an empty list hides every device
        (" 1 , ", ["1"]),  # stray spaces and commas
    ],
)
def test_detect_devices_reads_cuda_visible_devices(visible: str, expected: list[str]) -> None:
    assert detect_devices({"CUDA_VISIBLE_DEVICES": visible}) == expected


def test_backend_accepts_a_bare_name() -> None:
    spec = TrainSpec(**_TRAIN, backend="ray")
    assert spec.backend.kind == "ray"
    assert spec.backend.ray.max_failures == 0


def test_backend_rejects_unknown_kind_and_bad_replicas() -> None:
    with pytest.raises(ValueError, match="'local' or 'ray'"):
        BackendSpec(kind="slurm")
    with pytest.raises(ValueError, match="min_replicas=3 exceeds max_replicas=2"):
        RayOptions(min_replicas=3, max_replicas=2)


def test_command_string_is_split_like_a_shell() -> None:
    spec = CommandJobSpec(name="c", command="python -c 'print(1)'")
    assert spec.command == ["python", "-c", "print(1)"]


def test_read_job_file_tells_the_kind(tmp_path: Path) -> None:
    (tmp_path / "train.yaml").write_text(
        "name: t\nmodel: m:f\ndataset: m:d\nloss: m:l\nbackend: {priority: 4, max_attempts: 2}\n"
    )
    (tmp_path / "serve.yaml").write_text("models: [{name: mlp, source: mlp.pt}]\n")
    (tmp_path / "cmd.yaml").write_text("name: c\ncommand: echo hi\n")
    train = read_job_file(tmp_path / "train.yaml", workdir="/w")
    assert (train.kind, train.name, train.backend.priority, train.workdir) == (
        "train",
        "t",
        4,
        "/w",
    )
    assert read_job_file(tmp_path / "serve.yaml").name == "mlp"
    assert read_job_file(tmp_path / "cmd.yaml").spec["command"] == ["echo", "hi"]


def test_read_job_file_names_the_bad_field(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("name: c\ncommand: echo\nbackend: {max_attempts: 0}\n")
    with pytest.raises(SpecError, match="max_attempts"):
        read_job_file(tmp_path / "bad.yaml")


def test_job_request_round_trips() -> None:
    job = JobRequest("command", {"name": "c", "command": ["true"]}, "/tmp")
    assert JobRequest.from_dict(job.to_dict()) == job


def test_unknown_backend_is_named() -> None:
    with pytest.raises(SpecError, match="backend 'slurm' is not known; use one of"):
        get_backend("slurm")


def test_worker_exit_code_for_preemption_matches_the_trainer() -> None:
    from kilowatt.train import EXIT_PREEMPTED as TRAINER_EXIT

    assert EXIT_PREEMPTED == TRAINER_EXIT


@pytest.mark.parametrize(
    ("url", "nodes", "refused"),
    [
        ("sqlite:////home/kw/kilowatt.db", 2, True),  # other nodes cannot see the file
        ("sqlite:////home/kw/kilowatt.db", 1, False),  # one node shares the file
        ("postgresql+psycopg://kw@db/kw", 5, False),  # a server every node reaches
    ],
)
def test_sqlite_store_is_refused_only_across_nodes(url: str, nodes: int, refused: bool) -> None:
    from kilowatt.backends.ray import check_store_for_cluster
    from kilowatt.errors import BackendError

    if refused:
        with pytest.raises(BackendError, match=r"has 2 nodes.*Use PostgreSQL"):
            check_store_for_cluster(url, nodes)
    else:
        check_store_for_cluster(url, nodes)
