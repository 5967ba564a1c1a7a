"""Artifacts, datasets, model versions, aliases, deployments, lineage and deletion."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

import kilowatt
from kilowatt.errors import Conflict, NotFound, SpecError, StoreError
from kilowatt.store import Store


def _file(folder: Path, name: str, content: bytes) -> Path:
    path = folder / name
    path.write_bytes(content)
    return path


def _trained(store: Store, tmp_path: Path, content: bytes = b"weights") -> str:
    run = store.create_run("reg")
    store.log_artifact(run.id, _file(tmp_path, "model.pt", content))
    return run.id


def test_identical_artifacts_are_stored_once_and_download_verified(
    store: Store, tmp_path: Path
) -> None:
    first, second = store.create_run("a"), store.create_run("a")
    path = _file(tmp_path, "model.pt", b"same bytes")
    a = store.log_artifact(first.id, path)
    b = store.log_artifact(second.id, path, name="copy.pt")
    assert a.sha256 == b.sha256 == hashlib.sha256(b"same bytes").hexdigest()
    assert a.size_bytes == 10
    blobs = [p for p in (tmp_path / "artifacts").rglob("*") if p.is_file()]
    assert len(blobs) == 1
    out = store.download_artifact(second.id, "copy.pt", tmp_path / "out")
    assert out.read_bytes() == b"same bytes"
    with store.open_artifact(first.id, "model.pt") as handle:
        assert handle.read() == b"same bytes"
    blobs[0].write_bytes(b"rotted bytes")
    with pytest.raises(StoreError, match=r"'copy\.pt' .* is corrupt"):
        store.download_artifact(second.id, "copy.pt", tmp_path / "out2.pt")


def test_artifact_errors_name_the_problem(store: Store, tmp_path: Path) -> None:
    run = store.create_run("a")
    store.log_artifact(run.id, _file(tmp_path, "m.pt", b"one"))
    with pytest.raises(Conflict, match=r"already has an artifact 'm\.pt' with other content"):
        store.log_artifact(run.id, _file(tmp_path, "m2.pt", b"two"), name="m.pt")
    with pytest.raises(SpecError, match="is not a file"):
        store.log_artifact(run.id, tmp_path / "missing.pt")
    with pytest.raises(NotFound, match=r"has no artifact 'x\.pt'; it has: m\.pt"):
        store.get_artifact(run.id, "x.pt")


def test_register_versions_and_refuse_a_duplicate(store: Store, tmp_path: Path) -> None:
    run_id = _trained(store, tmp_path)
    v1 = store.register_model("clf", run_id=run_id, artifact="model.pt", signature={"in": [4]})
    v2 = store.register_model("clf", run_id=run_id, artifact="model.pt", aliases=["staging"])
    assert (v1.version, v2.version, v2.aliases) == (1, 2, ("staging",))
    assert v1.signature == {"in": [4]}
    assert v1.artifact_sha256 == hashlib.sha256(b"weights").hexdigest()
    with pytest.raises(Conflict, match="model clf already has version 2; omit the version"):
        store.register_model("clf", run_id=run_id, artifact="model.pt", version=2)
    with pytest.raises(NotFound, match="no run 'nope'"):
        store.register_model("clf", run_id="nope", artifact="model.pt")
    assert store.get_model_version("clf").version == 2
    assert store.get_model_version("clf@staging").version == 2
    assert store.get_model_version("clf:1").id == v1.id


def test_invalid_and_unknown_aliases(store: Store, tmp_path: Path) -> None:
    run_id = _trained(store, tmp_path)
    store.register_model("clf", run_id=run_id, artifact="model.pt")
    for bad in ("Prod", "1st", "latest", "has space"):
        with pytest.raises(SpecError, match=f"alias '{bad}' is invalid"):
            store.set_alias("clf", bad, 1)
    with pytest.raises(NotFound, match="model clf has no alias 'production'; its aliases: none"):
        store.get_model_version("clf@production")
    with pytest.raises(NotFound, match=r"model clf has no version 9; its versions: \[1\]"):
        store.set_alias("clf", "production", 9)
    with pytest.raises(NotFound, match="no model 'other' is registered"):
        store.get_model_version("other")


def test_alias_moves_are_atomic_and_audited_with_the_replaced_version(
    store: Store, tmp_path: Path
) -> None:
    run_id = _trained(store, tmp_path)
    for _ in range(2):
        store.register_model("clf", run_id=run_id, artifact="model.pt")
    assert store.set_alias("clf", "production", 1) is None
    seen: set[int] = set()
    stop = threading.Event()

    def read() -> None:  # a reader must always see version 1 or 2, never no alias
        while not stop.is_set():
            seen.add(store.get_model_version("clf@production").version)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for move in range(20):
            assert store.set_alias("clf", "production", 2 - move % 2) == 1 + move % 2
    finally:
        stop.set()
        reader.join()
    assert seen <= {1, 2} and seen
    moves = store.list_audit(action="model.alias", limit=1000)
    assert moves[0].details == {"replaced": None, "version": 1}
    assert moves[1].details == {"replaced": 1, "version": 2}
    assert all(e.actor == "tester" and e.target == "model:clf@production" for e in moves)


def test_lineage_runs_from_dataset_to_deployment(store: Store, tmp_path: Path) -> None:
    with kilowatt.start_run(project="lin", store=store) as run:
        run.log_dataset("mnist", version="1", fingerprint="f" * 64, num_rows=60000)
        run.log_artifact(_file(tmp_path, "m.pt", b"w"))
    version = kilowatt.register_model("digits", run=run, artifact="m.pt")
    deployment = store.create_deployment("digits:1", "http://127.0.0.1:8000/v2/models/digits")
    graph = store.lineage_of(version)
    labels = {key: node.label for key, node in graph.nodes.items()}
    assert graph.root == ("model_version", str(version.id))
    assert next(n.label for n in graph.parents(graph.root)).startswith(f"run-{run.id[:8]}")
    run_key = ("run", run.id)
    assert [n.label for n in graph.parents(run_key)] == ["mnist:1"]
    assert [n.kind for n in graph.children(graph.root)] == ["deployment"]
    assert labels[("deployment", str(deployment.id))].endswith("(pending)")
    assert {e.relation for e in graph.edges} == {"input", "produced", "deployed"}


def test_dataset_fingerprint_conflict(store: Store) -> None:
    store.log_dataset("mnist", version="1", fingerprint="a" * 64)
    assert store.log_dataset("mnist", version="1", fingerprint="a" * 64).version == "1"
    with pytest.raises(Conflict, match="dataset mnist:1 is already recorded with fingerprint"):
        store.log_dataset("mnist", version="1", fingerprint="b" * 64)


def test_deleting_with_dependents_needs_force(store: Store, tmp_path: Path) -> None:
    run_id = _trained(store, tmp_path)
    store.register_model("clf", run_id=run_id, artifact="model.pt", aliases=["production"])
    deployment = store.create_deployment("clf:1", "local")
    with pytest.raises(Conflict, match=r"run .* has dependents: model_version:clf:1; .*--force"):
        store.delete_run(run_id)
    with pytest.raises(
        Conflict, match=rf"clf:1 has dependents: deployment:{deployment.id}, alias:clf@production"
    ):
        store.delete_model_version("clf:1")
    assert store.delete_model_version("clf:1", force=True) == [
        f"deployment:{deployment.id}",
        "alias:clf@production",
    ]
    assert store.delete_run(run_id) == []  # no dependents left
    deletes = [e for e in store.list_audit(limit=1000) if e.action.endswith(".delete")]
    assert [(e.action, e.details["force"]) for e in deletes] == [
        ("model.delete", True),
        ("run.delete", False),
    ]
    with pytest.raises(NotFound):
        store.get_run(run_id)


def test_concurrent_registrations_get_distinct_versions(store: Store, tmp_path: Path) -> None:
    run_id = _trained(store, tmp_path)
    versions: list[int] = []
    lock = threading.Lock()

    def register() -> None:
        for _ in range(3):
            number = store.register_model("clf", run_id=run_id, artifact="model.pt").version
            with lock:
                versions.append(number)

    threads = [threading.Thread(target=register) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(versions) == list(range(1, 13))


def test_top_level_lineage_opens_the_configured_store(tmp_path: Path) -> None:
    weights = _file(tmp_path, "m.pt", b"w")
    with kilowatt.start_run(project="top") as run:
        run.log_dataset("iris", version="3", fingerprint="c" * 64)
    kilowatt.register_model("flowers", run=run.id, artifact=weights, aliases=["staging"])
    graph = kilowatt.lineage("flowers@staging")
    assert sorted(node.label for node in graph.nodes.values() if node.kind != "run") == [
        "flowers:1",
        "iris:3",
    ]
