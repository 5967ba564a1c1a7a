"""The promotion gate over HTTP: refusal is a 409 with the figures and leaves the alias;
a pass moves it; the optimize report of a version is readable."""

from __future__ import annotations

import json
from pathlib import Path

from api_live import LiveApi

from kilowatt.optimize import Candidate, Figures, OptimizeReport
from kilowatt.store import Store
from kilowatt.store.gates import REPORT_ARTIFACT


def _row(name: str, version: str, metric: float, joules: float) -> Candidate:
    figures = Figures(1 << 20, 1e-4, 2e-4, 1e4, 32, joules, joules * 3, "estimated-cpu-time")
    return Candidate(name, "t", {}, 1, "measured", metric=metric, figures=figures, version=version)


def _seed(store: Store, folder: Path) -> None:
    """digits:1 in production; digits:2 a good variant, digits:3 a pruned, worse one."""
    train = store.create_run("train")
    (folder / "m.pt").write_bytes(b"m")
    store.log_artifact(train.id, folder / "m.pt")
    parent = store.register_model("digits", run_id=train.id, artifact="m.pt",
                                  aliases=["production"])  # fmt: skip
    run = store.create_run("optimize")
    store.record_optimization(parent, run.id)
    for name in ("a.onnx", "b.pt"):
        (folder / name).write_bytes(name.encode())
        store.log_artifact(run.id, folder / name)
        store.register_model("digits", run_id=run.id, artifact=name)
    rows = [_row("fp32-eager", "digits:1", 0.96, 0.4), _row("onnx", "digits:2", 0.959, 0.1),
            _row("pruned", "digits:3", 0.5, 0.2)]  # fmt: skip
    report = OptimizeReport(rows, "accuracy", True, "energy", 0.005, None)
    (folder / REPORT_ARTIFACT).write_text(json.dumps(report.as_dict()))
    store.log_artifact(run.id, folder / REPORT_ARTIFACT)


def test_promote_over_http(live_api: LiveApi, store: Store, tmp_path: Path) -> None:
    _seed(store, tmp_path)
    url = "/api/v1/models/digits/aliases/production/promote"
    with live_api.client() as client:
        refused = client.post(url, json={"version": 3})
        after_refusal = client.get("/api/v1/models/digits").json()["aliases"]
        passed = client.post(url, json={"version": 2})
        after_pass = client.get("/api/v1/models/digits").json()["aliases"]
        variants = client.get("/api/v1/models/digits/versions/1/variants").json()
    assert refused.status_code == 409
    assert refused.json()["reasons"][0].startswith("accuracy 0.5000 vs holder 0.9600")
    assert after_refusal["production"] == 1
    assert passed.status_code == 200 and passed.json()["passed"]
    assert after_pass["production"] == 2
    assert [c["version"] for c in variants["candidates"]] == ["digits:1", "digits:2", "digits:3"]
    actions = [e.action for e in store.list_audit(limit=1000)]
    assert "model.promote.refused" in actions and "model.promote" in actions
