"""Promotion gates: the alias moves only when the measured figures hold up; every decision
(pass, refusal, forced move) is audited with the figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kilowatt.cli.main import main
from kilowatt.errors import PermissionDenied
from kilowatt.optimize import Candidate, Figures, OptimizeReport
from kilowatt.store import Store, open_store
from kilowatt.store.gates import REPORT_ARTIFACT, GatePolicy


def _row(name: str, version: str, metric: float, joules: float, p99_s: float) -> Candidate:
    figures = Figures(50 << 20, p99_s / 2, p99_s, 1e4, 32, joules, joules * 3, "estimated-cpu-time")
    return Candidate(name, "t", {}, 1, "measured", metric=metric, figures=figures, version=version)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """digits:1 holds production; digits:2 is a good int8 variant, digits:3 a heavily pruned
    one that lost accuracy; their figures are in the optimize run's report."""
    opened = open_store()
    model_file = tmp_path / "model.pt"
    model_file.write_bytes(b"weights")
    train = opened.create_run("train")
    opened.log_artifact(train.id, model_file)
    parent = opened.register_model("digits", run_id=train.id, artifact="model.pt",
                                   aliases=["production"])  # fmt: skip
    run = opened.create_run("optimize")
    opened.record_optimization(parent, run.id)
    for name in ("int8.onnx", "pruned.pt"):
        (tmp_path / name).write_bytes(name.encode())
        opened.log_artifact(run.id, tmp_path / name)
        opened.register_model("digits", run_id=run.id, artifact=name)
    report = OptimizeReport(
        [
            _row("fp32-eager", "digits:1", 0.962, 0.40, 0.0004),
            _row("onnx-int8-static", "digits:2", 0.960, 0.05, 0.0001),
            _row("pruned-l1-0.95", "digits:3", 0.700, 0.30, 0.0003),
        ],
        "accuracy", True, "energy", 0.005, None,
    )  # fmt: skip
    (tmp_path / REPORT_ARTIFACT).write_text(json.dumps(report.as_dict(), default=str))
    opened.log_artifact(run.id, tmp_path / REPORT_ARTIFACT)
    yield opened  # type: ignore[misc]
    opened.close()


def _holder(store: Store) -> int:
    return store.get_model_version("digits@production").version


def test_gate_refuses_the_pruned_variant_and_accepts_the_good_one(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "promote", "digits:3", "--alias", "production"]) == 1
    out = capsys.readouterr().out
    assert "refused" in out and "0.7000 vs holder 0.9620" in out
    assert _holder(store) == 1  # unchanged on refusal
    refused = store.list_audit(action="model.promote.refused")
    assert len(refused) == 1
    checks = {c["check"]: c for c in refused[0].details["checks"]}
    assert not checks["metric"]["passed"]
    assert (checks["metric"]["candidate"], checks["metric"]["holder"]) == (0.7, 0.962)

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
    assert slow.reasons == ["p99 0.100 ms vs SLO 0.050 ms"]
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
