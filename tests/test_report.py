import base64
import dataclasses
import html
import re
import stat

import pytest

from tests.plot_fixtures import ERROR_REASON, SKIP_REASON, other_run, result_set
from torchao_nb import ResultSet, report
from torchao_nb.cli import main
from torchao_nb.results import append_jsonl


@pytest.fixture
def runs(tmp_path):
    result_set().save(tmp_path / "cpu-run")
    other_run().save(tmp_path / "gpu-run")
    return tmp_path / "cpu-run", tmp_path / "gpu-run"


def embedded_pngs(text):
    return re.findall(r'<img src="data:image/png;base64,([^"]+)"', text)


def test_report_is_self_contained_and_its_figures_sit_beside_it(runs, tmp_path):
    out = tmp_path / "share" / "report.html"
    rep = report.build(runs, out)
    text = out.read_text()
    assert rep.html == out
    # offline: nothing to fetch, nothing to run
    assert "<script" not in text.lower()
    assert not re.search(r'(src|href)="(?!data:)', text)
    assert "http://" not in text and "https://" not in text
    # every embedded image is exactly one of the PNG files written beside it
    beside = sorted(p.name for p in out.parent.glob("*.png"))
    assert beside == sorted(p.name for p in rep.figures)
    assert beside == ["report-1-cpu-run-dashboard.png", "report-2-gpu-run-dashboard.png",
                      "report-compare-latency.png", "report-compare-speedup.png"]
    assert sorted(base64.b64decode(d) for d in embedded_pngs(text)) == sorted(p.read_bytes() for p in rep.figures)
    # tables: results of each run, reasons, environment, differences
    assert text.count('<table class="results">') == 2
    assert text.count('<table class="environment">') == 2
    assert text.count('<table class="differences">') == 1
    assert html.escape(SKIP_REASON) in text and html.escape(ERROR_REASON) in text
    assert "Test CPU" in text and "Other GPU" in text
    results = text.split('<table class="results">')[1].split("</table>")[0]
    assert results.count("<tr") == 1 + len(result_set())
    assert results.count('<tr class="skipped">') == 2 and results.count('<tr class="error">') == 2
    # written atomically: no temporary files left, and readable by others
    assert not list(out.parent.glob(".*tmp"))
    assert stat.S_IMODE(out.stat().st_mode) & 0o044 == 0o044


def test_the_tables_show_the_baseline_each_speedup_divides(runs, tmp_path):
    """A reader checks speedup = base ms / median ms from what is printed: terminal, panel, report."""
    from torchao_nb import columns, tables, widgets

    rs = result_set()
    text = tables.text(rs).splitlines()
    head = text[0]
    assert "base ms" in head
    for line, row in zip(text[2:], rs.rows):
        if row.status == "ok":
            cells = line.split()
            median, base, speedup = float(cells[4]), float(cells[6]), float(cells[7].rstrip("×"))
            assert speedup == pytest.approx(base / median, rel=0.01)
    assert "base ms" in widgets.table_html(rs) and "speedup = base ms / median ms" in widgets.table_html(rs)
    out = tmp_path / "report.html"
    report.build([runs[0]], out)
    page = out.read_text()
    assert "<th>base ms</th>" in page.replace(' class="num"', "")
    assert page.count(html.escape(columns.timing_note(rs))) == 1  # said once, under the table


def test_report_escapes_what_it_quotes(tmp_path):
    import dataclasses

    rs = result_set()
    rs = ResultSet((dataclasses.replace(rs.rows[3], reason="<script>alert(1)</script>"), *rs.rows[:3], *rs.rows[4:]),
                   rs.environment)
    rs.save(tmp_path / "r")
    text = report.build([tmp_path / "r"], tmp_path / "r.html").html.read_text()
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text


def test_report_command(runs, tmp_path, capsys):
    out = tmp_path / "cli.html"
    assert main(["report", str(runs[0]), "--out", str(out), "--label", "laptop"]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "cli-1-laptop-dashboard.png" in printed
    text = out.read_text()
    assert "<h2>laptop</h2>" in text and 'id="comparison"' not in text  # one run: nothing to compare
    assert len(embedded_pngs(text)) == 1


@pytest.mark.parametrize("argv, message", [
    (["report", "{tmp}/nowhere", "--out", "{tmp}/r.html"], "no results in"),
    (["report", "{run}", "--out", "{tmp}/r.pdf"], "must name an .html file"),
    (["report", "{run}", "--out", "{tmp}/r.html", "--label", "a", "--label", "b"], "one label per folder"),
])
def test_report_user_errors(argv, message, runs, tmp_path, capsys):
    rc = main([a.replace("{tmp}", str(tmp_path)).replace("{run}", str(runs[0])) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.startswith("error: ")


def test_a_merged_folder_of_two_devices_is_compared(tmp_path):
    import dataclasses

    cpu = [dataclasses.replace(r, device_name="Test CPU", torch_version="2.13.0+cpu") for r in result_set().rows]
    gpu = [dataclasses.replace(r, device_name="Other GPU", torch_version="2.13.0+cu130") for r in other_run().rows]
    ResultSet((*cpu, *gpu), {"devices": {"Test CPU": result_set().environment}}).save(tmp_path / "merged")
    text = report.build([tmp_path / "merged"], tmp_path / "r.html").html.read_text()
    assert 'id="comparison"' in text and text.count('<section class="run"') == 2
    runs_table = text.split('<table class="runs">')[1].split("</table>")[0]
    assert "Test CPU" in runs_table and "2.13.0+cu130" in runs_table


@pytest.mark.parametrize("content, why", [
    ("", "the file is empty"),
    ("[]", "expected an object with a list of 'rows', found a JSON list"),
    ('{"rows": [', "JSONDecodeError"),
    ('{"rows": [[1]]}', "a row is a JSON object, found list"),
])
def test_report_falls_back_from_an_unreadable_results_json_and_names_it(content, why, runs, tmp_path, capsys):
    folder = runs[0]
    for r in result_set().rows:  # rows.jsonl beside it is intact
        append_jsonl(folder / "rows.jsonl", r)
    (folder / "results.json").write_text(content)
    assert main(["report", str(folder), "--out", str(tmp_path / "r.html")]) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"note: could not read {folder / 'results.json'}") and why in err
    assert f"read {folder / 'rows.jsonl'} instead" in err and err.count("\n") == 1
    text = (tmp_path / "r.html").read_text()
    assert text.split('<table class="results">')[1].split("</table>")[0].count("<tr") == 1 + len(result_set())


def test_report_on_results_that_cannot_be_read_says_which_file(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.json").write_text("[]")
    (tmp_path / "run" / "results.csv").write_bytes(b"\xff\xfe")
    assert main(["report", str(tmp_path / "run"), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: could not read the results in") and err.count("\n") == 1
    assert "results.json: ValueError: expected an object" in err and "results.csv: UnicodeDecodeError" in err


def test_report_to_a_place_it_cannot_write(runs, capsys):
    assert main(["report", str(runs[0]), "--out", "/proc/x/r.html"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write the report to /proc/x/r.html") and err.count("\n") == 1


def test_generated_texts_stand_side_by_side_escaped(tmp_path):
    import json

    from tests.plot_fixtures import ok_row

    texts = {"prompts": ["The capital of France is", "1 < 2"], "unquantized": [" Paris.", " <b>true</b>"],
             "unquantized_how": "compiled", "new_tokens": 8}
    rows = [ok_row(mode, 1, 10.0, 0.1, 1.0, 1.0, None, 1.0, 10.0, model="smollm2-135m", perplexity=20.0 + i,
                   agreement=1.0 - i / 4, extra=json.dumps({"generations": {**texts, "quantized": [f" {mode}!", "x"]}}))
            for i, mode in enumerate(("noquant", "int4weightonly"))]
    ResultSet(tuple(rows), {"device": "cpu"}).save(tmp_path / "r")
    text = report.build([tmp_path / "r"], tmp_path / "r.html").html.read_text()
    table = text.split('<table class="generations">')[1].split("</table>")[0]
    heads = re.findall(r"<th>([^<]*)</th>", table)
    assert heads == ["prompt", "unquantized (compiled)", "noquant, 100% of tokens as unquantized",
                     "int4weightonly, 75% of tokens as unquantized"]
    assert table.count("<tr>") == 3  # the header and one line per prompt
    assert "<td> int4weightonly!</td>" in table and "&lt;b&gt;true&lt;/b&gt;" in table and "1 &lt; 2" in table
    assert "<b>true</b>" not in text and "<script" not in text.lower()


def test_the_timing_line_says_when_the_machine_moved_during_a_sweep():
    """The baseline is re-timed in every cell: a spread across one group's cells is the machine, said under the table."""
    from tests.plot_fixtures import row

    from torchao_nb import columns

    def cell(mode, base_ms, model="mlp"):
        return row(mode, 1, model=model, median_ms=1.0, speedup=base_ms, baseline_ms=base_ms, replicates=5)

    steady = [cell("noquant", 1.80), cell("int8weightonly", 1.78), cell("int4weightonly", 1.82)]
    assert columns.machine_drift(steady) is None
    assert "moved" not in columns.timing_note(steady)
    # two models a different size apart are two groups, not a drift
    assert columns.machine_drift(steady + [cell("noquant", 9.0, model="vit"), cell("int8dynamic", 9.1, model="vit")]) is None
    moved = steady + [cell("int8dynamic", 2.44), cell("float8weightonly", 3.79)]
    said = columns.machine_drift(moved)
    assert "1.78-3.79" in said and "2.13x" in said
    assert said in columns.timing_note(moved)
    # rows timed together share one base ms: the drift is what the rounds saw
    from torchao_nb.extras import TimingNotes, extra_text

    together = [row(m, 1, median_ms=1.0, speedup=2.0, baseline_ms=2.0, replicates=5,
                    extra=extra_text(TimingNotes(together=2, base_range_ms=[1.9, 2.9]))) for m in ("noquant", "int4weightonly")]
    said = columns.machine_drift(together)
    assert "1.9-2.9 ms" in said and "1.53x" in said
    assert "every mode of its group" in columns.timing_note(together)
    calm = [dataclasses.replace(r, extra=extra_text(TimingNotes(together=2, base_range_ms=[1.95, 2.05]))) for r in together]
    assert columns.machine_drift(calm) is None
