"""Promotion gates: the alias moves only when the measured figures hold up; every decision
(pass, refusal, forced move) is audited with the figures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kilowatt.cli.main import main
from kilowatt.errors import PermissionDenied
from kilowatt.store import Store, open_store
from kilowatt.store.gates import GatePolicy


@pytest.fixture
def store(optimized_digits: None) -> Iterator[Store]:
    """conftest's optimized digits: digits:1 holds production; digits:2 is a good int8
    variant, digits:3 a heavily pruned one that lost accuracy (0.5 vs 0.96)."""
    with open_store() as opened:
        yield opened


def _holder(store: Store) -> int:
    return store.get_model_version("digits@production").version


def test_gate_refuses_the_pruned_variant_and_accepts_the_good_one(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "promote", "digits:3", "--alias", "production"]) == 1
    out = capsys.readouterr().out
    assert "refused" in out and "0.5000 vs holder 0.9600" in out
    assert _holder(store) == 1  # unchanged on refusal
    refused = store.list_audit(action="model.promote.refused")
    assert len(refused) == 1
    checks = {c["check"]: c for c in refused[0].details["checks"]}
    assert not checks["metric"]["passed"]
    assert (checks["metric"]["candidate"], checks["metric"]["holder"]) == (0.5, 0.96)

    assert main(["models", "promote", "digits:2", "--alias", "production"]) == 0
    assert _holder(store) == 2
    passed = store.list_audit(action="model.promote")
    assert len(passed) == 1
    details = passed[0].details
    assert details["holder"] == "digits:1" and details["candidate"] == "digits:2"
    assert {c["check"] for c in details["checks"] if c["passed"]} == {"metric", "energy"}


def test_gate_checks_the_latency_slo_and_energy_margin(store: Store) -> None:
    slow = store.promote("digits:2", "production", GatePolicy(slo_p99_s=0.00005))
    assert not slow.passed and not slow.moved
    assert slow.reasons == ["p99 0.200 ms vs SLO 0.050 ms"]
    hungry = store.promote("digits:1", "staging")  # no holder: only its own figures count
    assert hungry.passed
    back = store.promote("digits:1", "production")  # holder 1 -> itself: trivially within
    assert back.passed
    assert _holder(store) == 1


def test_force_needs_admin_and_is_audited(store: Store) -> None:
    with pytest.raises(PermissionDenied, match="admin"):
        store.promote("digits:3", "production", force=True, is_admin=False)
    assert _holder(store) == 1
    decision = store.promote("digits:3", "production", force=True, is_admin=True)
    assert decision.moved and not decision.passed
    assert _holder(store) == 3
    forced = store.list_audit(action="model.promote.forced")
    assert forced[0].details["forced"] is True


def test_an_unmeasured_version_is_refused_with_the_fix(store: Store, tmp_path: Path) -> None:
    run = store.create_run("train")
    (tmp_path / "other.pt").write_bytes(b"x")
    store.log_artifact(run.id, tmp_path / "other.pt")
    store.register_model("digits", run_id=run.id, artifact="other.pt")
    decision = store.promote("digits:4", "production")
    assert not decision.moved
    assert "kilowatt optimize" in decision.reasons[0]
    assert _holder(store) == 1
