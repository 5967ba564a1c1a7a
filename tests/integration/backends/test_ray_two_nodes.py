"""Training on a two-node Ray cluster on one machine (``ray.cluster_utils.Cluster``)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kilowatt.backends.ray import RayBackend
from kilowatt.backends.recorder import StoreRecorder
from kilowatt.errors import BackendError
from kilowatt.spec import Settings

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ray = pytest.importorskip("ray")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from ray_helpers import final_weights, local_weights, train_spec  # noqa: E402


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[None]:
    from ray.cluster_utils import Cluster

    # One CPU per node: the two training workers must land on different nodes.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        yield
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_two_worker_job_spans_nodes_and_matches_the_local_result(
    two_nodes: None, tmp_path: Path
) -> None:
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    spec = train_spec("two-nodes", tmp_path / "ray")
    result = RayBackend(Settings.from_env()).train(spec, workdir=str(HERE))
    assert (result.steps, result.samples) == (10, 160)
    reference = local_weights(spec, tmp_path / "local")
    assert final_weights(tmp_path / "ray") == pytest.approx(reference)


def test_sqlite_store_is_refused_on_several_nodes(two_nodes: None, tmp_path: Path) -> None:
    settings = Settings.from_env()
    spec = train_spec("tracked", tmp_path / "ray")
    with pytest.raises(BackendError, match=r"SQLite .* 2 nodes.*Use PostgreSQL"):
        RayBackend(settings).train(spec, callbacks=[StoreRecorder("any-run", settings)])


def test_ray_job_with_sqlite_store_is_refused(two_nodes: None, tmp_path: Path) -> None:
    from kilowatt.backends import JobRequest

    job = JobRequest("command", {"name": "c", "command": ["true"]}, str(tmp_path))
    with pytest.raises(BackendError, match="Use PostgreSQL"):
        RayBackend(Settings.from_env()).submit(job)
