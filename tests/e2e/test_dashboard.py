"""The dashboard in headless Chromium over a store filled by real training runs.

Two tiny regressions are trained with ``kilowatt.Trainer`` (recorded by the store-backed
callback), ``kilowatt ui`` serves the store, and Chromium opens the runs list, a run page
whose charts must have drawn pixels, the overlay comparison, the plan page and the totals.
Screenshots go to ``tests/e2e/artifacts/``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from kilowatt.serve.process import ServerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = "/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None

ARTIFACTS = Path(__file__).parent / "artifacts"
WAIT_S = 60
# uPlot strokes series 0 and 1 in these colours (see ui/static/charts.js).
TEAL, ORANGE = (15, 118, 110), (194, 65, 12)

PLAN_SPEC = """\
model: {architecture: generic, params: 1.2e7, forward_flops_per_sample: 1.8e9}
train: {samples: 50000, epochs: 10, precision: fp32}
constraints: {instances: [local-cpu]}
"""


def _train(name: str, lr: float) -> str:
    """Train a 4-input linear regression for 60 steps; return the run id.

    Its params hold a nested section (a training spec's ``backend``), its metrics FLOP/s
    (values in the billions) and checkpoint stalls (milliseconds), and it is evaluated and
    priced, so the dashboard has every kind of figure to show.
    """
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    import kilowatt
    from kilowatt.backends.recorder import StoreRecorder
    from kilowatt.meter import Accountant
    from kilowatt.spec import TrainSpec

    torch.manual_seed(0)
    inputs = torch.randn(256, 4)
    targets = inputs @ torch.tensor([[1.0], [2.0], [-1.0], [0.5]])
    spec = TrainSpec(name=name, model="m:f", dataset="m:d", loss="m:l", checkpoint={"url": "/x"})
    backend = spec.model_dump(mode="json")["backend"]
    params = {"lr": lr, "backend": backend}
    with kilowatt.start_run(project="e2e", name=name, params=params) as run:
        model = nn.Linear(4, 1)
        trainer = kilowatt.Trainer(
            model,
            torch.optim.SGD(model.parameters(), lr=lr),
            train_data=TensorDataset(inputs, targets),
            eval_data=TensorDataset(inputs[:64], targets[:64]),
            loss_fn=nn.functional.mse_loss,
            callbacks=[StoreRecorder(run.id)],
            accountant=Accountant(price_usd_per_hour=3.0, grid_intensity_gco2e_per_kwh=400.0),
            name=name,
            steps=60,
            batch_size=16,
            log_every=5,
            eval_every=20,
            device="cpu",
            model_flops_per_sample=2.4e8,  # as if a far bigger model: FLOP/s in the billions
            checkpoint={"every": "10", "keep_last": 1, "asynchronous": False},
        )
        trainer.fit()
        weights = Path(tempfile.mkdtemp()) / "model.pt"
        torch.save(model.state_dict(), weights)
        run.log_artifact(weights, name="model.pt")
        run.log_dataset(
            "synthetic-regression", version="1", fingerprint="e2e" * 10, num_rows=len(inputs)
        )
        return run.id


@pytest.fixture
def dashboard_url(tmp_path: Path) -> Iterator[str]:
    """``kilowatt ui`` on the port it binds itself, over this test's KILOWATT_HOME."""
    with ServerProcess([], program="ui", log_path=tmp_path / "ui.log") as server:
        yield server.endpoint


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip(
            "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM or ""
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--window-size=1400,1800",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _wait_page(driver: Any, name: str) -> None:
    WebDriverWait(driver, WAIT_S).until(
        lambda d: d.find_element(By.ID, "main").get_attribute("data-ready") == name
    )


def _coloured_pixels(driver: Any, selector: str, rgb: tuple[int, int, int]) -> int:
    """Pixels of the canvases under ``selector`` within a small distance of ``rgb``."""
    script = """
        const [sel, r, g, b] = arguments;
        let count = 0;
        for (const canvas of document.querySelectorAll(sel + " canvas")) {
          const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
          for (let i = 0; i < data.length; i += 4) {
            if (data[i + 3] > 200 && Math.abs(data[i] - r) < 40 && Math.abs(data[i + 1] - g) < 40
                && Math.abs(data[i + 2] - b) < 40) count += 1;
          }
        }
        return count;
    """
    return int(driver.execute_script(script, selector, *rgb))


def _shot(driver: Any, name: str) -> None:
    """Save the whole page (the window grows to the page's height first)."""
    ARTIFACTS.mkdir(exist_ok=True)
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.set_window_size(1400, max(900, height + 40))
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def test_dashboard_shows_runs_charts_and_comparison(browser: Any, dashboard_url: str) -> None:
    import kilowatt

    fast, slow = _train("lr-0.05", 0.05), _train("lr-0.01", 0.01)
    kilowatt.register_model("regressor", run=slow, artifact="model.pt")
    kilowatt.register_model("regressor", run=fast, artifact="model.pt", aliases=["production"])
    _check_dashboard(browser, dashboard_url, fast, slow)
    _check_registry(browser, dashboard_url)


# The y-axis tick labels each chart drew (uPlot keeps them on its axis), how wide each is in
# the axis font, and the room the axis leaves them inside the canvas.
_TICKS_SCRIPT = """
    const out = [];
    for (const box of document.querySelectorAll(arguments[0] + " .chart")) {
      const plot = box.uplot;
      if (!plot) { out.push({metric: box.dataset.metric, labels: null}); continue; }
      const axis = plot.axes[1];
      plot.ctx.font = axis.font[0];
      const labels = (axis._values || []).map(String);
      const widths = labels.map((l) => plot.ctx.measureText(l).width / devicePixelRatio);
      out.push({metric: box.dataset.metric, labels, widest: Math.max(...widths),
                room: axis._size - axis.ticks.size - axis.gap});
    }
    return out;
"""


def _assert_ticks_readable(driver: Any, selector: str) -> dict[str, list[str]]:
    """Every chart's y ticks are distinct and drawn whole inside the canvas."""
    charts = driver.execute_script(_TICKS_SCRIPT, selector)
    assert charts, f"no charts under {selector}"
    for chart in charts:
        labels = chart["labels"]
        assert labels and len(labels) >= 2, chart
        assert len(set(labels)) == len(labels), f"{chart['metric']}: repeated ticks {labels}"
        assert chart["widest"] <= chart["room"], f"{chart['metric']}: {labels} cut off"
    return {chart["metric"]: chart["labels"] for chart in charts}


def _assert_fits_the_viewport(driver: Any, table: str) -> None:
    """No cell of ``table`` is wider than the window, and the page does not scroll sideways."""
    sizes = driver.execute_script(
        """
        const cells = [...document.querySelectorAll(arguments[0] + " td")];
        return {viewport: document.documentElement.clientWidth,
                page: document.documentElement.scrollWidth,
                table: document.querySelector(arguments[0]).getBoundingClientRect().right,
                cells: cells.map((c) => [c.getBoundingClientRect().width,
                                         c.textContent.slice(0, 60)])};
        """,
        table,
    )
    too_wide = [text for width, text in sizes["cells"] if width > sizes["viewport"]]
    assert too_wide == [], f"cells wider than the {sizes['viewport']} px window: {too_wide}"
    assert sizes["table"] <= sizes["viewport"] and sizes["page"] <= sizes["viewport"], sizes


def _check_runs_table(driver: Any, fast: str, slow: str) -> None:
    rows = driver.find_elements(By.CSS_SELECTOR, "#runs-table tbody tr[data-run-id]")
    assert sorted(row.get_attribute("data-run-id") for row in rows) == sorted([fast, slow])
    assert driver.find_element(By.ID, "run-count").text == "2"
    assert driver.find_element(By.ID, "eval-column").text == "eval_loss"
    for row in rows:  # the figures runs are compared by, each filled in
        for figure in ("loss", "eval", "energy", "cost", "carbon", "throughput"):
            cell = row.find_element(By.CSS_SELECTOR, f'td[data-figure="{figure}"]').text
            assert cell and cell != "–", (figure, cell)
        summary = row.find_element(By.CSS_SELECTOR, "details.nested summary").text
        assert summary.startswith("backend: ") and "{" not in summary, summary
    _assert_fits_the_viewport(driver, "#runs-table")
    rows[0].find_element(By.CSS_SELECTOR, "details.nested summary").click()  # the whole value
    whole = rows[0].find_element(By.CSS_SELECTOR, "details.nested pre").text
    assert '"max_attempts"' in whole and '"ray"' in whole
    _assert_fits_the_viewport(driver, "#runs-table")


def _check_dashboard(driver: Any, url: str, fast: str, slow: str) -> None:
    driver.get(url + "/")
    _wait_page(driver, "runs")
    _check_runs_table(driver, fast, slow)
    _shot(driver, "01-runs")

    driver.find_element(By.LINK_TEXT, "lr-0.05").click()
    _wait_page(driver, "run")
    charts = driver.find_elements(By.CSS_SELECTOR, "#metric-charts .chart")
    assert "loss" in [chart.get_attribute("data-metric") for chart in charts]
    assert _coloured_pixels(driver, "#metric-charts", TEAL) > 100  # the loss curve is drawn
    system = [
        c.get_attribute("data-metric")
        for c in driver.find_elements(By.CSS_SELECTOR, "#system-charts .chart")
    ]
    assert {"samples_per_s", "power_w", "energy_j"} <= set(system)
    assert driver.find_element(By.CSS_SELECTOR, '.card[data-key="energy"] .value').text.endswith(
        "J"
    )
    eval_card = driver.find_element(By.CSS_SELECTOR, '.card[data-key="eval"]')
    assert eval_card.find_element(By.CSS_SELECTOR, ".label").text == "eval_loss"
    float(eval_card.find_element(By.CSS_SELECTOR, ".value").text)  # a number, beside energy
    ticks = _assert_ticks_readable(driver, "#system-charts")
    assert {"flops_per_s", "checkpoint_stall_s"} <= set(ticks)
    assert any(label[-1] in "GT" for label in ticks["flops_per_s"]), ticks["flops_per_s"]
    _assert_ticks_readable(driver, "#metric-charts")
    params = {
        row.find_element(By.CSS_SELECTOR, "td").text: row.find_elements(By.CSS_SELECTOR, "td")[1]
        for row in driver.find_elements(By.CSS_SELECTOR, "#params tr")
    }
    assert params.keys() == {"lr", "backend"} and params["lr"].text == "0.05"
    assert '"max_attempts": ' in params["backend"].find_element(By.TAG_NAME, "pre").text
    assert "model.pt" in driver.find_element(By.ID, "artifacts").text
    lineage = driver.find_element(By.ID, "lineage").text
    assert "dataset: synthetic-regression" in lineage and "model_version: regressor" in lineage
    _shot(driver, "02-run")

    driver.get(url + "/#/runs")
    _wait_page(driver, "runs")
    for box in driver.find_elements(By.CSS_SELECTOR, "#runs-table .pick"):
        box.click()
    driver.find_element(By.ID, "compare-button").click()
    _wait_page(driver, "compare")
    loss = driver.find_element(By.CSS_SELECTOR, '#compare-charts .chart[data-metric="loss"]')
    assert "lr-0.05" in loss.text and "lr-0.01" in loss.text  # the legend names both runs
    assert _coloured_pixels(driver, "#compare-charts", TEAL) > 100
    assert _coloured_pixels(driver, "#compare-charts", ORANGE) > 100  # the second run's curve
    _assert_ticks_readable(driver, "#compare-charts")
    # ticks of a small range (checkpoint stalls) and of a huge one (FLOP/s), as drawn
    assert driver.execute_async_script(
        """const done = arguments[arguments.length - 1];
        import("/static/format.js").then((f) => done([
          f.siTicks([0.001, 0.0011, 0.0012, 0.0013]), f.siTicks([0, 5e9, 1e10, 1.5e10])]));"""
    ) == [["1.0m", "1.1m", "1.2m", "1.3m"], ["0", "5G", "10G", "15G"]]
    _shot(driver, "03-compare")

    driver.get(url + "/#/plan")
    _wait_page(driver, "plan")
    driver.find_element(By.ID, "plan-spec").send_keys(PLAN_SPEC)
    driver.find_element(By.CSS_SELECTOR, "#plan-form button").click()
    WebDriverWait(driver, WAIT_S).until(ec.presence_of_element_located((By.ID, "plan-table")))
    assert "local-cpu" in driver.find_element(By.ID, "plan-table").text
    assert _coloured_pixels(driver, "#plan-charts", TEAL) > 50  # bars drawn
    _shot(driver, "04-plan")

    driver.get(url + "/#/totals")
    _wait_page(driver, "totals")
    assert "e2e" in driver.find_element(By.ID, "totals").text
    _shot(driver, "05-totals")


def _check_registry(driver: Any, url: str) -> None:
    driver.get(url + "/#/models")
    _wait_page(driver, "models")
    rows = driver.find_elements(By.CSS_SELECTOR, "#models table.versions tbody tr")
    assert [row.text.split()[0] for row in rows] == ["v2", "v1"]
    assert "production" in rows[0].text
    _shot(driver, "06-models")

    driver.get(url + "/#/audit")
    _wait_page(driver, "audit")
    assert driver.find_element(By.ID, "audit-verdict").text.startswith("audit log intact")
    assert "model.alias" in driver.find_element(By.ID, "audit").text
    _shot(driver, "07-audit")

    driver.get(url + "/docs")  # the OpenAPI explorer, from vendored Swagger UI
    WebDriverWait(driver, WAIT_S).until(
        ec.presence_of_element_located((By.CSS_SELECTOR, ".swagger-ui .opblock"))
    )
    assert "/api/v1/runs/{run_id}" in driver.find_element(By.CSS_SELECTOR, ".swagger-ui").text
    _shot(driver, "08-docs")


def _train_from_a_data_set(tmp_path: Path) -> tuple[str, int]:
    """Train two whole epochs through ``kilowatt.data.Loader``; the run id and the data
    set's bytes (each epoch reads them all: the first from storage, the second from memory)."""
    import numpy as np
    import torch

    import kilowatt
    from kilowatt.backends.recorder import StoreRecorder
    from kilowatt.data import Loader, Storage, create_dataset

    rows, batch = 256, 16
    rng = np.random.default_rng(0)
    arrays = {"x": rng.random((rows, 4), dtype=np.float32), "id": np.arange(rows)}
    storage = Storage(str(tmp_path / "data"))
    version = create_dataset(arrays, "points", "v1", storage, shard_bytes=2048)
    with kilowatt.start_run(project="e2e", name="from-data") as run:
        model = torch.nn.Linear(4, 1)
        kilowatt.Trainer(
            model,
            torch.optim.SGD(model.parameters(), lr=0.01),
            train_data=Loader(version),
            training_step=lambda m, b: m(b["x"]).pow(2).mean(),
            callbacks=[StoreRecorder(run.id)],
            steps=2 * rows // batch,
            batch_size=batch,
            log_every=4,
            device="cpu",
            progress=False,
        ).fit()
        return run.id, version.manifest.bytes


def test_run_page_shows_the_data_panel(browser: Any, dashboard_url: str, tmp_path: Path) -> None:
    run_id, size = _train_from_a_data_set(tmp_path)
    browser.get(f"{dashboard_url}/#/runs/{run_id}")
    _wait_page(browser, "run")
    panel = browser.find_element(By.ID, "data-panel")
    assert panel.is_displayed()

    def tier(name: str, figure: str) -> Any:
        return panel.find_element(
            By.CSS_SELECTOR, f'tr[data-tier="{name}"] td[data-figure="{figure}"]'
        )

    # the figures the run ended on, as the panel shows them
    assert float(tier("remote", "bytes").get_attribute("data-value")) == size
    assert float(tier("memory", "bytes").get_attribute("data-value")) == size
    assert float(tier("disk", "bytes").get_attribute("data-value")) == 0
    assert tier("memory", "hit-rate").text == "50.0%"
    assert tier("remote", "bytes").text.endswith(("B", "KiB")) and tier("remote", "bytes").text
    for card in ("fetch-latency", "data-wait"):
        value = panel.find_element(By.CSS_SELECTOR, f'.card[data-key="{card}"] .value').text
        assert value.endswith("s") and value != "–", (card, value)
    charts = {
        c.get_attribute("data-metric")
        for c in panel.find_elements(By.CSS_SELECTOR, "#data-charts .chart")
    }
    assert {"data_remote_bytes", "data_wait_s", "data_memory_hit_rate"} <= charts
    assert _coloured_pixels(browser, "#data-charts", TEAL) > 100  # the curves are drawn
    shown_elsewhere = browser.find_elements(
        By.CSS_SELECTOR, '#metric-charts .chart[data-metric^="data_"]'
    ) + browser.find_elements(By.CSS_SELECTOR, '#system-charts .chart[data-metric^="data_"]')
    assert shown_elsewhere == []
    _shot(browser, "09-run-data")
