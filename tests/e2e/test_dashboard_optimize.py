"""The model page shows a version's variants with the Pareto front drawn, and its promote
button goes through the gate: a refusal is shown and leaves the alias, a pass moves it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402
from test_dashboard import (  # noqa: E402  (skips the module when no browser exists)
    TEAL,
    WAIT_S,
    _coloured_pixels,
    _shot,
    _wait_page,
    browser,
    dashboard_url,
)

from kilowatt.optimize import Candidate, Figures, OptimizeReport  # noqa: E402
from kilowatt.store import open_store  # noqa: E402
from kilowatt.store.gates import REPORT_ARTIFACT  # noqa: E402

__all__ = ["browser", "dashboard_url"]  # fixtures used here


def _row(name: str, version: str, metric: float, joules: float, pareto: bool) -> Candidate:
    figures = Figures(1 << 20, 1e-4, 2e-4, 1e4, 32, joules, joules * 3, "estimated-cpu-time")
    return Candidate(name, "t", {}, 1, "measured", metric=metric, figures=figures,
                     version=version, pareto=pareto, within_budget=metric > 0.9)  # fmt: skip


def _seed(folder: Path) -> None:
    """digits:1 in production; digits:2 a good variant; digits:3 a pruned, worse one."""
    with open_store() as store:
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
            store.register_model("digits", run_id=run.id, artifact=name,
                                 signature={"parent": "digits:1", "transform": name})  # fmt: skip
        rows = [_row("fp32-eager", "digits:1", 0.96, 0.4, True),
                _row("onnx-int8-static", "digits:2", 0.959, 0.1, True),
                _row("pruned-l1-0.95", "digits:3", 0.5, 0.05, True)]  # fmt: skip
        report = OptimizeReport(rows, "accuracy", True, "energy", 0.005, None)
        (folder / REPORT_ARTIFACT).write_text(json.dumps(report.as_dict()))
        store.log_artifact(run.id, folder / REPORT_ARTIFACT)


def _promote(driver: Any, version: int) -> str:
    driver.find_element(By.CSS_SELECTOR, f'button.promote[data-version="{version}"]').click()
    result = driver.find_element(By.CSS_SELECTOR, "#models .gate-result")
    WebDriverWait(driver, WAIT_S).until(lambda _: result.text)
    return str(result.text)


def test_model_page_draws_variants_and_gates_the_promote_button(
    browser: Any, dashboard_url: str, tmp_path: Path
) -> None:
    _seed(tmp_path)
    browser.get(dashboard_url + "/#/models")
    _wait_page(browser, "models")
    report = browser.find_element(By.CSS_SELECTOR, ".variant-report")
    assert "onnx-int8-static x1" in report.text and "pruned-l1-0.95 x1" in report.text
    assert _coloured_pixels(browser, ".variant-report", TEAL) > 50  # the Pareto bars
    _shot(browser, "09-model-variants")
    refused = _promote(browser, 3)
    assert refused.startswith("refused: accuracy 0.5000 vs holder 0.9600")
    with open_store() as store:
        assert store.get_model_version("digits@production").version == 1
    browser.refresh()  # a fresh page: the verdict line starts empty
    _wait_page(browser, "models")
    assert _promote(browser, 2).startswith("production -> digits:2")
    with open_store() as store:
        assert store.get_model_version("digits@production").version == 2
