"""The executed 03_report notebook's HTML export in headless chromium with the network cut off: figures and tables show."""

import nbformat
import pytest

from tests.browser.lab import ARTIFACTS, CHROMIUM, chromium, offline, png_size
from torchao_nb import notebooks

pytest.importorskip("playwright.sync_api", reason="pip install playwright (the `test` extra) for browser tests")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="Debian chromium is missing: apt-get install -y chromium (scripts/test.sh does it)")

PARAMS = {"model": "llama-tiny", "modes": "noquant,int8dynamic", "batch_sizes": [1], "compile": False, "fast": True}


def test_report_notebook_html_renders_offline(tmp_path):
    import base64

    ipynb, html_file = notebooks.execute("03_report", tmp_path, dict(PARAMS, out=str(tmp_path)))
    nb = nbformat.read(ipynb, as_version=4)
    pngs = [base64.b64decode(out.data["image/png"]) for cell in nb.cells if cell.cell_type == "code"
            for out in cell.outputs if "image/png" in out.get("data", {})]
    assert len(pngs) == 2  # the dashboard and accuracy vs speedup

    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        fetched, page_errors = offline(page), []  # the export must need nothing from a network
        page.on("pageerror", lambda e: page_errors.append(str(e)))
        page.goto(html_file.as_uri(), wait_until="load")

        images = page.eval_on_selector_all(
            ".jp-OutputArea-output img",
            "imgs => imgs.map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.getBoundingClientRect().width])")
        assert sorted((w, h) for _, w, h, _ in images) == sorted(png_size(p) for p in pngs)  # decoded, full size
        assert all(done and shown > 300 for done, _, _, shown in images)
        tables = page.locator(".jp-OutputArea-output table")
        assert tables.count() >= 3  # environment, headline results, every column
        texts = [tables.nth(i).inner_text() for i in range(tables.count())]
        assert all(tables.nth(i).is_visible() for i in range(tables.count()))
        assert any("int8dynamic" in t and "noquant" in t for t in texts)
        assert any("torchao" in t for t in texts)  # the environment table
        assert fetched == [] and page_errors == []

        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "03_report_html.png"), full_page=True)
        page.close()
