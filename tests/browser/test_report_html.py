"""Opens the HTML report in headless Debian chromium, with the network cut off, and checks what it rendered."""

import pytest

from tests.browser.lab import ARTIFACTS, CHROMIUM, chromium, offline, png_size
from tests.plot_fixtures import SKIP_REASON, llm_run, other_run, result_set
from torchao_nb import report

pytest.importorskip("playwright.sync_api", reason="pip install playwright (the `test` extra) for browser tests")

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="Debian chromium is missing: apt-get install -y chromium (scripts/test.sh does it)")


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


def test_report_renders_offline_in_chromium(browser, tmp_path):
    result_set().save(tmp_path / "cpu-run")
    other_run().save(tmp_path / "gpu-run")
    rep = report.build([tmp_path / "cpu-run", tmp_path / "gpu-run"], tmp_path / "report.html")

    page = browser.new_page(viewport={"width": 1400, "height": 900})
    fetched = offline(page)  # the report must need nothing from a network
    page.goto(rep.html.as_uri(), wait_until="load")

    images = page.eval_on_selector_all(
        "figure img", "imgs => imgs.map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.getBoundingClientRect().width])")
    assert len(images) == 4
    sizes = sorted(png_size(p.read_bytes()) for p in rep.figures)
    assert sorted((w, h) for _, w, h, _ in images) == sizes  # decoded, at the size of the PNGs beside the report
    assert all(done and shown > 300 for done, _, _, shown in images)
    for css, rows in (("results", len(result_set())), ("differences", 10)):
        counts = page.eval_on_selector_all(f"table.{css}", "ts => ts.map(t => t.tBodies[0].rows.length)")
        assert counts[0] == rows
        assert page.locator(f"table.{css}").first.is_visible()
    assert page.locator("table.reasons").first.get_by_text(SKIP_REASON).first.is_visible()
    assert page.locator("table.environment").first.get_by_text("Test CPU").is_visible()
    assert page.title().startswith("torchao_nb report")
    assert fetched == []

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    page.close()


def test_a_language_models_generated_texts_render_side_by_side_offline(browser, tmp_path):
    llm_run().save(tmp_path / "lm")
    rep = report.build([tmp_path / "lm"], tmp_path / "report.html")
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    fetched = offline(page)
    page.goto(rep.html.as_uri(), wait_until="load")
    table = page.locator("table.generations").first
    assert table.is_visible()
    cells = table.locator("tr").nth(2).locator("td").all_inner_texts()  # the second prompt's row
    assert [c.strip() for c in cells] == ["1 < 2", "<b>true</b>", "x", "x"]  # markup shown as text, not rendered
    assert table.get_by_text("int4weightonly!").is_visible()
    assert fetched == []
    page.close()
