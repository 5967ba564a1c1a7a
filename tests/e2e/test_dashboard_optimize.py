"""The model page shows a version's variants with the Pareto front drawn, and its promote
button goes through the gate: a refusal is shown and leaves the alias, a pass moves it."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

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

from kilowatt.store import open_store  # noqa: E402

__all__ = ["browser", "dashboard_url"]  # fixtures used here


def _promote(driver: Any, version: int) -> str:
    driver.find_element(By.CSS_SELECTOR, f'button.promote[data-version="{version}"]').click()
    result = driver.find_element(By.CSS_SELECTOR, "#models .gate-result")
    WebDriverWait(driver, WAIT_S).until(lambda _: result.text)
    return str(result.text)


@pytest.mark.usefixtures("optimized_digits")
def test_model_page_draws_variants_and_gates_the_promote_button(
    browser: Any, dashboard_url: str
) -> None:
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
