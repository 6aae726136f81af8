"""One field catalogue: a column added to it reaches the CLI table, the panel, the CSV, the v3 export and the plots."""

import csv
import dataclasses
import io

import pytest

from tests.plot_fixtures import result_set
from torchao_nb import columns, export, fields, plots, tables
from torchao_nb.cli import main
from torchao_nb.fields import CSV, PANEL, REPORT, TERMINAL, Field, Metric
from torchao_nb.results import CSV_COLUMNS, ResultSet


def us_per_sample(r):
    return None if r.median_ms is None else 1e3 * r.median_ms / r.batch_size


# A column no table had: latency per sample, in µs, shown and written to the CSV.
FAKE = Field("us_per_sample", "µs/sample", compute=us_per_sample,
             fmt="{:.1f}", unit="µs", numeric=True, views=frozenset({TERMINAL, PANEL, REPORT, CSV}))


@pytest.fixture
def fake_column(monkeypatch):
    monkeypatch.setitem(fields.CATALOGUE, FAKE.name, FAKE)
    return FAKE


def environment():  # what the CLI's header line reads
    return {"compile": True, "baseline": True, "isolation": "subprocesses"}


def test_a_column_added_to_the_catalogue_reaches_the_cli_table(fake_column, monkeypatch, tmp_path, capsys):
    rs = result_set(**environment())
    monkeypatch.setattr("torchao_nb.engine.sweep", lambda **_: rs)
    assert main(["run", "--quiet", "--out", str(tmp_path)]) == 0
    head, rule, *lines = capsys.readouterr().out.splitlines()[1:1 + 2 + len(rs)]
    assert "µs/sample" in head and head.index("µs/sample") > head.index("layers")  # where the catalogue put it
    first_ok = next(i for i, r in enumerate(rs) if r.status == "ok")
    assert f"{us_per_sample(rs.rows[first_ok]):.1f}" in lines[first_ok]


def test_a_column_added_to_the_catalogue_reaches_the_panels_table(fake_column):
    from torchao_nb.widgets import table_html

    html = table_html(result_set())
    assert "<th" in html and ">µs/sample</th>" in html
    assert ">µs/sample</th>" in tables.results_html(result_set(), columns.REPORT)  # and the report's


def test_a_column_left_out_of_a_view_is_not_shown(monkeypatch):
    monkeypatch.setitem(fields.CATALOGUE, FAKE.name, dataclasses.replace(FAKE, views=frozenset({REPORT})))
    from torchao_nb.widgets import table_html

    assert "µs/sample" not in table_html(result_set()) and "µs/sample" not in tables.text(result_set())
    assert "µs/sample" in tables.results_html(result_set(), columns.REPORT)


def test_a_column_added_to_the_catalogue_reaches_the_csv_header_and_the_csv_still_loads(fake_column, tmp_path):
    rs = result_set()
    rs.save(tmp_path)
    with open(tmp_path / "results.csv", newline="") as f:
        records = list(csv.DictReader(f))
    assert list(records[0]) == CSV_COLUMNS + ["us_per_sample"]  # Row's columns first, as before
    assert [rec["us_per_sample"] for rec in records] == ["" if r.median_ms is None else str(us_per_sample(r)) for r in rs]
    assert ResultSet.load(tmp_path / "results.csv").rows == rs.rows  # a reader skips the derived column


def test_without_derived_csv_fields_the_csv_is_rows_own_columns():
    header = next(csv.reader(io.StringIO(result_set().to_csv_text())))
    assert header == CSV_COLUMNS  # what today's files have, so they and new ones read the same


def test_each_view_shows_the_columns_it_always_showed_in_their_order():
    # Kept deliberately: the CLI table, the panel and the report show what they did before the catalogue.
    assert [f.name for f in fields.in_view(TERMINAL)] == [
        "model", "mode", "batch", "status", "median_ms", "iqr_ms", "base_ms", "speedup", "speedup_ci", "vs_eager", "sqnr",
        "cosine", "tokens_per_s", "perplexity", "ppl_change", "agreement", "gen_tokens_per_s", "weights_mb", "disk_mb",
        "roofline", "layers", "layer_configs", "note"]
    assert [f.name for f in fields.in_view(PANEL)] == [
        "model", "mode", "batch", "status", "median_ms", "base_ms", "speedup", "speedup_ci", "vs_eager", "sqnr",
        "perplexity", "ppl_change", "agreement", "gen_tokens_per_s", "weights_mb", "layers", "note"]
    assert [f.name for f in fields.in_view(REPORT)] == [
        "model", "mode", "batch", "status", "median_ms", "iqr_ms", "synced_ms", "base_ms", "speedup", "speedup_ci",
        "vs_eager", "sqnr", "cosine", "tokens_per_s", "perplexity", "ppl_change", "agreement", "ttft_ms", "decode_ms",
        "gen_tokens_per_s", "weights_mb", "disk_mb", "reload", "peak_mb", "roofline", "layers", "layer_configs",
        "compile_s", "note"]


def test_the_v3_export_writes_the_catalogues_metrics(monkeypatch):
    rs = result_set()
    ok = next(r for r in rs if r.status == "ok")
    names = {rec["metric"]["name"] for rec in export.row_records(ok)}
    assert {"median latency (ms)", "speedup vs unquantized (x)", "weights (MB)"} <= names
    assert names <= {m.name for m in export.METRICS}
    weights = next(rec for rec in export.row_records(ok) if rec["metric"]["name"] == "weights (MB)")
    assert weights["metric"]["benchmark_values"] == [ok.weight_bytes * 1e-6]  # bytes → MB, the catalogue's scale
    assert weights["metric"]["extra_info"]["unit"] == "MB"

    iqr_field = dataclasses.replace(fields.CATALOGUE["iqr_ms"], metric=Metric("IQR (µs)", "µs", scale=1e3))
    monkeypatch.setitem(fields.CATALOGUE, "iqr_ms", iqr_field)
    iqr = next(rec for rec in export.row_records(ok) if rec["metric"]["name"] == "IQR (µs)")
    assert iqr["metric"]["benchmark_values"] == [ok.iqr_ms * 1e3] and iqr["metric"]["extra_info"]["unit"] == "µs"
    export.validate_v3(export.row_records(ok))


def test_the_plots_take_their_axis_labels_and_bars_from_the_catalogue(monkeypatch):
    rs = result_set()
    assert plots.batch_scaling(rs, metric="per_sample_ms").axes[0].get_ylabel() == "latency per sample (ms)"
    monkeypatch.setitem(fields.CATALOGUE, "sqnr", dataclasses.replace(fields.CATALOGUE["sqnr"], axis="SQNR, renamed"))
    assert plots.accuracy_vs_speedup(rs).axes[0].get_ylabel() == "SQNR, renamed"
    in_kb = dataclasses.replace(fields.CATALOGUE["weights_mb"], scale=1e-3)
    monkeypatch.setitem(fields.CATALOGUE, "weights_mb", in_kb)
    bars = plots.memory(rs).axes[0].patches
    ok = next(r for r in rs if r.status == "ok")
    assert any(b.get_height() == pytest.approx(ok.weight_bytes * 1e-3) for b in bars)  # now in kB


def test_a_field_needs_an_attribute_or_a_computation():
    with pytest.raises(ValueError, match="attr"):
        Field("nothing", "nothing")
