"""The quickstart in a real browser: JupyterLab on 127.0.0.1, Debian chromium via playwright, click Run, see a figure."""

import pytest

from tests.browser.lab import ARTIFACTS, CHROMIUM, chromium, jupyterlab, open_and_run_all, set_modes

pytest.importorskip("playwright.sync_api", reason="pip install playwright (the `test` extra) for browser tests")
pytest.importorskip("jupyterlab", reason="pip install jupyterlab (the `test` extra) for browser tests")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="Debian chromium is missing: apt-get install -y chromium (scripts/test.sh does it)")

MODEL = "llama-tiny"  # the smallest built-in model: the browser test checks the plumbing, not the numbers
MODE = "int8dynamic"


def test_quickstart_panel_runs_in_jupyterlab(tmp_path):
    with jupyterlab(tmp_path, ["01_quickstart"]) as (url, token), chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        panel = open_and_run_all(page, url, token, "01_quickstart")

        # Unavailable modes are disabled, with their reason as the tooltip.
        disabled = panel.locator(".torchao-nb-modes button:disabled")
        assert disabled.count() >= 1
        assert "can't run here" in disabled.first.get_attribute("title")

        picker = panel.locator("select").first
        picker.select_option(label=picker.locator("option", has_text=MODEL).first.inner_text())
        panel.locator(".torchao-nb-compile input[type=checkbox]").uncheck()  # eager: seconds, not minutes
        set_modes(panel, {MODE})
        panel.locator(".torchao-nb-run").click()

        figure = panel.locator(".torchao-nb-figure")
        page.wait_for_function("el => el.complete && el.naturalWidth > 300", arg=figure.element_handle(), timeout=300_000)
        status = panel.locator(".torchao-nb-status")
        page.wait_for_function("el => el.textContent.startsWith('done')", arg=status.element_handle(), timeout=300_000)

        table = panel.locator(".torchao-nb-table")
        assert MODE in table.inner_text() and MODEL in table.inner_text()
        assert panel.locator(".torchao-nb-errors").inner_text().strip() == ""
        assert page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").count() == 0

        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "panel-jupyterlab.png"
        panel.screenshot(path=str(shot))
        assert shot.stat().st_size > 20_000
        page.close()
