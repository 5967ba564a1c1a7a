"""Checkpoints: atomic writes, verification, fallback to the previous one, pruning, mirrors."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from fsspec.implementations.memory import MemoryFileSystem

from kilowatt.errors import CheckpointError
from kilowatt.train import CheckpointInfo, CheckpointManager, CheckpointWarning


def _state(value: float) -> dict:
    return {"model": {"w": torch.full((4,), value)}, "step": int(value)}


def _save_all(manager: CheckpointManager, steps: list[int], metric: dict | None = None) -> None:
    for step in steps:
        manager.save(step, _state(step), {"rank": step * 10}, (metric or {}).get(step, {}))
    manager.wait()


@pytest.mark.parametrize("asynchronous", [True, False])
def test_roundtrip_returns_what_was_saved(tmp_path: Path, asynchronous: bool) -> None:
    manager = CheckpointManager(str(tmp_path), asynchronous=asynchronous)
    report = manager.save(7, _state(7.0), {"data": {"epoch": 1}}, {"eval_loss": 0.5})
    manager.close()
    assert report.asynchronous is asynchronous
    info = manager.latest()
    assert info is not None
    assert (info.step, info.metrics, info.world_size) == (7, {"eval_loss": 0.5}, 1)
    state, rank_state = manager.load(info)
    assert torch.equal(state["model"]["w"], torch.full((4,), 7.0))
    assert rank_state == {"data": {"epoch": 1}}
    files = sorted(p.name for p in (tmp_path / "step-000000007").iterdir())
    assert files == ["manifest-rank-0.json", "rank-0.pt", "state.pt"]  # no temp files left


def test_async_save_copies_state_so_later_changes_do_not_leak_in(tmp_path: Path) -> None:
    manager = CheckpointManager(str(tmp_path), asynchronous=True)
    live = torch.zeros(3)
    manager.save(1, {"model": {"w": live}}, {})
    live += 5.0  # training continues while the writer works
    manager.close()
    state, _ = manager.load(manager.latest())
    assert torch.equal(state["model"]["w"], torch.zeros(3))


def test_corrupted_newest_checkpoint_is_skipped_with_a_warning(tmp_path: Path) -> None:
    manager = CheckpointManager(str(tmp_path), keep_last=5)
    _save_all(manager, [1, 2, 3])
    newest = tmp_path / "step-000000003" / "state.pt"
    newest.write_bytes(newest.read_bytes()[:-10] + b"garbage!!!")
    with pytest.warns(CheckpointWarning, match="step-000000003 is incomplete or corrupted"):
        info = manager.latest()
    assert info is not None and info.step == 2
    state, _ = manager.load(info)
    assert state["step"] == 2


def test_checkpoint_without_manifest_counts_as_unfinished(tmp_path: Path) -> None:
    manager = CheckpointManager(str(tmp_path), keep_last=5)
    _save_all(manager, [1, 2])
    (tmp_path / "step-000000002" / "manifest-rank-0.json").unlink()  # killed mid-write
    with pytest.warns(CheckpointWarning, match="manifest of rank 0 is missing"):
        assert manager.latest().step == 1


def test_keep_last_and_keep_best(tmp_path: Path) -> None:
    manager = CheckpointManager(str(tmp_path), keep_last=2, keep_best=("eval_loss", "min"))
    losses = {1: {"eval_loss": 0.9}, 2: {"eval_loss": 0.1}, 3: {"eval_loss": 0.5}}
    losses |= {4: {"eval_loss": 0.7}, 5: {"eval_loss": 0.6}}
    _save_all(manager, [1, 2, 3, 4, 5], losses)
    kept = sorted(p.name for p in tmp_path.iterdir())
    # the two newest, plus step 2 with the lowest eval_loss
    assert kept == ["step-000000002", "step-000000004", "step-000000005"]


def test_mirror_is_read_when_the_primary_has_nothing_valid(tmp_path: Path) -> None:
    manager = CheckpointManager(str(tmp_path / "a"), mirror_url=str(tmp_path / "b"))
    _save_all(manager, [4])
    (tmp_path / "a" / "step-000000004" / "rank-0.pt").write_bytes(b"")
    with pytest.warns(CheckpointWarning):
        info = manager.latest()
    assert info is not None and info.url == f"{tmp_path / 'b'}/step-000000004"
    assert manager.load(info)[0]["step"] == 4


def test_multi_rank_checkpoint_needs_every_rank(tmp_path: Path) -> None:
    rank0 = CheckpointManager(str(tmp_path), rank=0, world_size=2)
    _save_all(rank0, [3])
    with pytest.warns(CheckpointWarning, match="manifest of rank 1 is missing"):
        assert rank0.latest() is None
    rank1 = CheckpointManager(str(tmp_path), rank=1, world_size=2)
    rank1.save(3, None, {"who": 1})
    rank1.close()
    info = rank1.latest()
    assert info is not None and info.world_size == 2
    assert rank1.load(info)[1] == {"who": 1}
    single = CheckpointManager(str(tmp_path), world_size=1)
    with pytest.raises(CheckpointError, match="written by 2 worker"):
        single.load(info)


class _GatedFileSystem(MemoryFileSystem):
    """An in-memory store whose writes wait for ``gate`` (a slow remote)."""

    protocol = "gatedmem"
    gate = threading.Event()
    writing = threading.Event()

    def pipe_file(self, path, value, **kwargs):  # type: ignore[override]
        self.writing.set()
        assert self.gate.wait(timeout=120), "test never opened the gate"
        return super().pipe_file(path, value, **kwargs)


def test_async_save_returns_while_the_store_is_still_writing() -> None:
    fs = _GatedFileSystem()
    fs.gate.clear()
    manager = CheckpointManager("gatedmem://ckpt-unit", fs=fs)
    try:
        report = manager.save(1, _state(1.0), {})
        assert fs.writing.wait(timeout=60)
        assert manager.writing  # the caller got control back mid-write
        assert report.asynchronous
    finally:
        fs.gate.set()
        manager.close()
    assert manager.latest().step == 1


def test_failed_background_write_surfaces_as_checkpoint_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    manager = CheckpointManager(str(blocker / "sub"))
    manager.save(1, _state(1.0), {})
    with pytest.raises(CheckpointError, match=r"writing a checkpoint to .* failed"):
        manager.wait()


def test_manifest_lists_sha256_of_each_file(tmp_path: Path) -> None:
    import hashlib

    manager = CheckpointManager(str(tmp_path), asynchronous=False)
    manager.save(2, _state(2.0), {})
    folder = tmp_path / "step-000000002"
    manifest = json.loads((folder / "manifest-rank-0.json").read_text())
    for name, entry in manifest["files"].items():
        data = (folder / name).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def test_consecutive_async_saves_keep_their_own_values(tmp_path: Path) -> None:
    # The second save reuses the first one's host buffers; the first must be on disk first.
    manager = CheckpointManager(str(tmp_path), keep_last=5)
    live = torch.zeros(3)
    manager.save(1, {"model": {"w": live}}, {})
    live += 1.0
    manager.save(2, {"model": {"w": live}}, {})
    manager.close()
    first = manager.load(CheckpointInfo(1, str(tmp_path / "step-000000001")))[0]
    second = manager.load(manager.latest())[0]
    assert torch.equal(first["model"]["w"], torch.zeros(3))
    assert torch.equal(second["model"]["w"], torch.ones(3))
