import math

import matplotlib
import numpy as np
import pytest
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from tests.plot_fixtures import ERROR_REASON, OK, SKIP_REASON, other_run, result_set
from torchao_nb import ResultSet, UserError, autoquant, plots  # noqa: F401  (autoquant: its mode and figure)
from torchao_nb import modes as modes_mod
from torchao_nb import runs as runs_mod


@pytest.fixture(autouse=True)
def agg():
    matplotlib.use("Agg")


@pytest.fixture
def rs():
    return result_set()


def gids(ax, prefix, kind=None):
    """Artists of `ax` whose gid starts with prefix: gid → artist."""
    artists = list(ax.patches) + list(ax.texts) + list(ax.lines) + list(ax.collections)
    return {a.get_gid(): a for a in artists if (a.get_gid() or "").startswith(prefix)}


def bars(ax, field):
    """{(mode, group label): height} of the bars drawn for `field`."""
    out = {}
    for gid, patch in gids(ax, f"bar|{field}|").items():
        _, _, mode, group, _ = gid.split("|")
        out[(mode, group)] = patch.get_height()
    return out


def expected(column):
    names = ["mode", "batch", "median_ms", "iqr_ms", "speedup", "speedup_vs_eager", "sqnr_db", "cosine", "weight_mb"]
    i = names.index(column)
    return {(spec[0], f"batch {spec[1]}"): spec[i] for spec in OK}


def legend_text(fig):
    """Every legend entry, wrapped lines joined again."""
    texts = (t.get_text() for leg in fig.legends + [a.get_legend() for a in fig.axes if a.get_legend()]
             for t in leg.get_texts())
    return " ".join(" ".join(texts).split())


def assert_marked(ax, mode, status, group):
    marks = [g for g in gids(ax, f"{status}|") if f"|{mode}|" in g and group in g]
    assert marks, f"{status} cell {mode}/{group} is not marked; marks: {list(gids(ax, status))}"


def test_speedup_bar_heights_equal_the_speedups_and_are_labelled(rs):
    fig = plots.speedup(rs)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert bars(ax, "speedup") == pytest.approx(expected("speedup"))
    assert bars(ax, "speedup_vs_eager") == pytest.approx(expected("speedup_vs_eager"))
    labels = {t.get_text() for t in ax.texts}
    assert {"1.25×", "2.00×", "1.88×"} <= labels
    assert any(line.get_gid() == "one" and line.get_ydata()[0] == 1.0 for line in ax.lines)


def test_skipped_and_error_cells_are_marked_with_their_reasons(rs):
    for draw in (plots.speedup, plots.latency, plots.memory):
        fig = draw(rs)
        ax = fig.axes[0]
        for group in ("batch 1", "batch 4"):
            assert_marked(ax, "float8dynamic", "skipped", group)
            assert_marked(ax, "int4weightonly", "error", group)
        # no bar was drawn for them
        assert not [g for g in gids(ax, "bar|") if "float8dynamic" in g or "int4weightonly" in g]
        text = legend_text(fig)
        assert SKIP_REASON in text and ERROR_REASON in text
        marks = [t.get_text() for t in ax.texts if (t.get_gid() or "").startswith("label|")]
        assert "✗ skipped [1]" in marks and "✗ error [2]" in marks


def test_latency_bars_and_iqr_error_bars(rs):
    ax = plots.latency(rs).axes[0]
    assert bars(ax, "median_ms") == pytest.approx(expected("median_ms"))
    # each error bar spans the IQR around the median
    spans = sorted(np.ptp(seg[:, 1]) for c in ax.collections if c.get_gid() is None for seg in c.get_segments())
    assert spans == pytest.approx(sorted(expected("iqr_ms").values()))
    refs = gids(ax, "ref|")
    assert {g.split("|")[1] for g in refs} == {"unquantized, compiled (baseline)", "unquantized, eager"}
    base = refs["ref|unquantized, compiled (baseline)|batch 1"]
    assert base.get_segments()[0][0][1] == pytest.approx(10.0)  # noquant at 1.00× means the baseline is 10 ms


def test_memory_bars_are_megabytes(rs):
    ax = plots.memory(rs).axes[0]
    assert bars(ax, "weight_bytes") == pytest.approx(expected("weight_mb"))
    assert bars(ax, "peak_mem_bytes") == pytest.approx({k: 2 * v for k, v in expected("weight_mb").items()})


def test_roofline_bars_are_percent_of_copy_bandwidth(rs):
    from tests.plot_fixtures import roofline_pct

    fig = plots.roofline(result_set(copy_gbs=123.0))
    ax = fig.axes[0]
    want = {(spec[0], f"batch {spec[1]}"): roofline_pct(spec[8], spec[2]) for spec in OK}
    assert bars(ax, "roofline_pct") == pytest.approx(want)
    assert any(list(line.get_ydata()) == [100, 100] for line in ax.lines)
    assert "123 GB/s" in ax.get_title() and "%" in ax.get_ylabel()
    assert_marked(ax, "float8dynamic", "skipped", "batch 1")
    assert "roofline" in plots.FIGURES


def test_accuracy_points_and_pareto_front(rs):
    fig = plots.accuracy_vs_speedup(rs)
    ax = fig.axes[0]
    pts = {g: tuple(c.get_offsets()[0]) for g, c in gids(ax, "point|").items()}
    assert pts["point|int8dynamic|batch 1"] == pytest.approx((1.25, 30.0))
    assert pts["point|int8weightonly|batch 4"] == pytest.approx((1.25, 37.0))
    # identical output (noquant) sits above every finite SQNR
    top = pts["point|noquant|batch 1"][1]
    assert top > 38.0
    # batch 1: noquant (1.0, top) and int8weightonly (2.0, 38) beat int8dynamic (1.25, 30)
    front = gids(ax, "pareto|")["pareto|batch 1"]
    assert list(front.get_xdata()) == [1.0, 2.0]
    assert list(front.get_ydata()) == [top, 38.0]
    front4 = gids(ax, "pareto|")["pareto|batch 4"]
    assert list(front4.get_xdata()) == [1.0, 1.25, 2.0]  # at batch 4 every point is on the front
    listed = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "✗ float8dynamic: skipped [1]" in listed and "✗ int4weightonly: error [2]" in listed
    assert "batch 1" in listed and "batch 4" in listed  # marker shapes tell the batch sizes apart
    assert "SQNR" in ax.get_ylabel() and "dB" in ax.get_ylabel()
    cos = plots.accuracy_vs_speedup(rs, metric="cosine").axes[0]
    assert tuple(gids(cos, "point|")["point|noquant|batch 1"].get_offsets()[0]) == pytest.approx((1.0, 1.0))


def test_pareto_front_function():
    pts = [(1.0, 50.0), (2.0, 30.0), (1.5, 20.0), (0.5, 60.0), (2.0, 10.0)]
    assert plots.pareto_front(pts) == [3, 0, 1]
    assert plots.pareto_front([(1.0, math.inf), (0.9, 10.0)]) == [0]


def test_batch_scaling_lines_and_marks(rs):
    ax = plots.batch_scaling(rs).axes[0]
    lines = {g.split("|")[1]: line for g, line in gids(ax, "line|").items()}
    assert list(lines["int8dynamic"].get_xdata()) == [1, 4]
    assert list(lines["int8dynamic"].get_ydata()) == [1.25, 2.0]
    assert "int4weightonly" not in lines
    assert_marked(ax, "int4weightonly", "error", "batch 4")
    assert_marked(ax, "float8dynamic", "skipped", "batch 1")
    assert ax.get_xscale() == "log"
    ms = plots.batch_scaling(rs, metric="per_sample_ms").axes[0]
    per = {g.split("|")[1]: line for g, line in gids(ms, "line|").items()}
    assert list(per["noquant"].get_ydata()) == pytest.approx([10.0, 5.0])


def test_one_colour_per_mode_in_every_figure(rs):
    speed = bars_colours(plots.speedup(rs).axes[0])
    lat = bars_colours(plots.latency(rs).axes[0])
    acc = {g.split("|")[1]: to_hex(c.get_facecolor()[0]) for g, c in gids(plots.accuracy_vs_speedup(rs).axes[0], "point|").items()}
    for mode in ("noquant", "int8dynamic", "int8weightonly"):
        assert speed[mode] == lat[mode] == acc[mode] == plots.mode_color(mode)
    assert len({plots.mode_color(m) for m in modes_mod.MODES}) == len(modes_mod.MODES)
    assert plots.mode_color("from-another-version") == plots.mode_color("from-another-version")


def bars_colours(ax):
    return {g.split("|")[2]: to_hex(p.get_facecolor()) for g, p in gids(ax, "bar|").items() if g.endswith("baseline")
            or g.split("|")[1] == "median_ms"}


FOR_EVERY_RESULT = [n for n in plots.FIGURES if n != "autoquant"]  # autoquant's needs an autoquant row


@pytest.mark.parametrize("name", FOR_EVERY_RESULT)
def test_titles_name_model_device_dtype_and_axes_have_units(rs, name):
    ax = plots.FIGURES[name].draw(rs).axes[0]
    title = ax.get_title()
    for word in ("mlp", "cpu", "bfloat16"):
        assert word in title, f"{name} title {title!r} lacks {word}"
    assert "(" in ax.get_ylabel() or "cosine" in ax.get_ylabel()


def test_figures_draw_into_a_given_axes_and_never_touch_pyplot(rs):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    fig = Figure(figsize=(30, 6), layout="constrained")
    axes = fig.subplots(1, len(FOR_EVERY_RESULT))
    for ax, name in zip(axes, FOR_EVERY_RESULT):
        assert plots.FIGURES[name].draw(rs, ax=ax) is fig
    plots.dashboard(rs)
    plots.compare({"a": rs, "b": other_run()})
    assert plt.get_fignums() == before
    assert plots.to_png(fig)[:8] == b"\x89PNG\r\n\x1a\n"


def test_dashboard_composes_the_panels_that_apply(rs):
    fig = plots.dashboard(rs)
    names = [ax.get_gid() for ax in fig.axes]
    assert names == ["panel|speedup", "panel|latency", "panel|accuracy", "panel|memory", "panel|roofline", "panel|batch_scaling", "panel|notes"]
    notes = next(t.get_text() for t in fig.axes[-1].texts)
    assert SKIP_REASON in notes and ERROR_REASON in notes
    assert "Test CPU" in fig.get_suptitle() and "torchao 0.18.0" in fig.get_suptitle()
    # the speedup panel holds the same bars as the stand-alone figure
    assert bars(fig.axes[0], "speedup") == pytest.approx(expected("speedup"))
    one = plots.dashboard(rs.where(batch_size=1))
    assert "panel|batch_scaling" not in [ax.get_gid() for ax in one.axes]
    only_ok = plots.dashboard(with_rows(rs, [r for r in rs.rows if r.status == "ok"]))
    assert "panel|notes" not in [ax.get_gid() for ax in only_ok.axes]


def test_dashboard_takes_extra_panels_only_when_rows_carry_their_data(rs):
    def applies(results):
        return any("decisions" in r.extra_dict for r in results.rows)

    def draw(results, ax=None, notes=True):
        ax.plot([0, 1])
        return ax.get_figure(root=True)

    panel = plots.register(plots.FigureSpec("test-extra", draw, applies, wide=True))
    try:
        assert "panel|test-extra" not in [ax.get_gid() for ax in plots.dashboard(rs).axes]
        import dataclasses

        tagged = with_rows(rs, [dataclasses.replace(rs.rows[0], extra='{"decisions": {}}'), *rs.rows[1:]])
        assert "panel|test-extra" in [ax.get_gid() for ax in plots.dashboard(tagged).axes]
        with pytest.raises(ValueError, match="already registered"):
            plots.register(panel)
    finally:
        del plots.FIGURES["test-extra"]


def test_compare_table_matches_cells_and_gives_differences(rs):
    df = runs_mod.compare_table({"cpu": rs, "gpu": other_run()})
    cell = df[(df["mode"] == "int8dynamic") & (df["batch_size"] == 1)].iloc[0]
    assert cell["cpu: median ms"] == 8.0 and cell["gpu: median ms"] == 4.0
    assert cell["gpu / cpu latency"] == pytest.approx(0.5)
    assert cell["gpu − cpu speedup"] == pytest.approx(1.25)
    missing = df[(df["mode"] == "float8dynamic") & (df["batch_size"] == 4)].iloc[0]
    assert missing["cpu: status"] == "skipped" and missing["gpu: status"] == "missing"
    assert missing["cpu: reason"] == SKIP_REASON
    int4 = df[(df["mode"] == "int4weightonly") & (df["batch_size"] == 1)].iloc[0]
    assert int4["cpu: status"] == "error" and int4["gpu: speedup"] == 2.5 and math.isnan(int4["gpu − cpu speedup"])
    noquant = df[(df["mode"] == "noquant") & (df["batch_size"] == 1)].iloc[0]
    assert noquant["cpu: SQNR dB"] == math.inf
    assert len(df) == 10
    assert list(df["mode"][:5]) == ["noquant", "int8dynamic", "int8weightonly", "int4weightonly", "float8dynamic"]


def test_compare_figure_puts_runs_side_by_side(rs):
    fig = plots.compare({"cpu": rs, "gpu": other_run()})
    ax = fig.axes[0]
    heights = {(g.split("|")[2], g.split("|")[3], g.split("|")[4]): p.get_height() for g, p in gids(ax, "bar|").items()}
    assert heights[("int8dynamic", "batch 1", "cpu")] == 1.25
    assert heights[("int8dynamic", "batch 1", "gpu")] == 2.5
    assert heights[("int4weightonly", "batch 4", "gpu")] == 2.5
    assert_marked(ax, "float8dynamic", "missing", "batch 4")
    assert_marked(ax, "int4weightonly", "error", "batch 1")
    assert "cpu" in legend_text(fig) and "gpu" in legend_text(fig) and ERROR_REASON in legend_text(fig)
    lat = plots.compare({"cpu": rs, "gpu": other_run()}, metric="median_ms").axes[0]
    assert lat.get_yscale() == "log"


def test_bad_input_gets_a_clear_error(rs, tmp_path):
    with pytest.raises(UserError, match="no rows"):
        plots.speedup(ResultSet())
    with pytest.raises(UserError, match="ResultSet"):
        plots.dashboard([1, 2])
    with pytest.raises(UserError, match="choose one of"):
        plots.accuracy_vs_speedup(rs, metric="psnr")
    with pytest.raises(UserError, match="choose one of"):
        plots.batch_scaling(rs, metric="bogus")
    with pytest.raises(UserError, match="valid"):
        plots.dashboard(rs, panels=["nope"])
    with pytest.raises(UserError, match="no results in"):
        runs_mod.load_runs([tmp_path])
    with pytest.raises(UserError, match="several rows"):
        import dataclasses

        runs_mod.compare_table([with_rows(rs, [*rs.rows, dataclasses.replace(rs.rows[0], dtype="float32")])])


def test_load_runs_labels_from_folder_names(rs, tmp_path):
    rs.save(tmp_path / "cpu")
    other_run().save(tmp_path / "gpu")
    other_run().save(tmp_path / "x" / "gpu")
    runs = runs_mod.load_runs([tmp_path / "cpu", tmp_path / "gpu", tmp_path / "x" / "gpu"])
    assert list(runs) == ["cpu", "gpu", "gpu (2)"]
    assert runs["cpu"].rows == rs.rows
    with pytest.raises(UserError, match="one label per folder"):
        runs_mod.load_runs([tmp_path / "cpu"], labels=["a", "b"])


def test_noisy_rows_are_outlined_and_wide_latencies_go_log(rs):
    import dataclasses

    rows = [dataclasses.replace(r, noisy=True, median_ms=500.0) if (r.mode, r.batch_size) == ("int8dynamic", 1) else r
            for r in rs.rows]
    fig = plots.latency(with_rows(rs, rows))
    ax = fig.axes[0]
    assert gids(ax, "bar|median_ms|int8dynamic|batch 1")["bar|median_ms|int8dynamic|batch 1|median latency"].get_linestyle() in ("--", "dashed")
    assert gids(ax, "bar|median_ms|noquant|batch 1")["bar|median_ms|noquant|batch 1|median latency"].get_linestyle() in ("-", "solid")
    assert ax.get_yscale() == "log" and "log scale" in ax.get_ylabel()
    assert "noisy" in legend_text(fig)
    assert plots.latency(rs).axes[0].get_yscale() == "linear"
    mem = plots.memory(with_rows(rs, rows))
    assert all(p.get_linestyle() in ("-", "solid") for p in gids(mem.axes[0], "bar|").values())  # sizes aren't timings
    assert "noisy" not in legend_text(mem)


def test_dashboard_of_a_real_sweep(two_linear, fast):
    from torchao_nb import sweep

    real = sweep(model=two_linear, example_inputs=(__import__("torch").randn(2, 128),), modes="noquant,int8dynamic,float8dynamic",
                 device="cpu", dtype="float32", compile=False, progress=False, policy=fast)
    fig = plots.dashboard(real)
    speed = bars(fig.axes[0], "speedup")
    assert speed == pytest.approx({(r.mode, ""): r.speedup for r in real.rows if r.status == "ok"})
    assert_marked(fig.axes[0], "float8dynamic", "skipped", "")
    assert "eager (no compile)" in fig.axes[0].get_title()
    assert len(speed) == 2 and all(v > 0 for v in speed.values())


def test_autoquant_panel_appears_only_with_a_decision_table(rs, monkeypatch):
    import dataclasses

    assert "panel|autoquant" not in [ax.get_gid() for ax in plots.dashboard(rs).axes]
    drawn = []

    def fake(row, ax=None):  # stands in for the real drawing of the decision table
        drawn.append(row)
        ax.set_title("choices")
        return ax.get_figure(root=True)

    monkeypatch.setattr(plots, "autoquant_choices", fake)
    table = '{"autoquant": {"layers": []}}'
    tagged = [dataclasses.replace(r, mode="autoquant", extra=table) for r in rs.rows if r.mode == "int8dynamic"]
    fig = plots.dashboard(with_rows(rs, [*rs.rows, *tagged]))
    assert "panel|autoquant" in [ax.get_gid() for ax in fig.axes]
    assert drawn == [tagged[-1]]
    assert "the last of 2 autoquant rows" in next(ax for ax in fig.axes if ax.get_gid() == "panel|autoquant").get_title()


def test_a_sweep_where_nothing_ran_is_still_drawn_and_marked(rs):
    bad = with_rows(rs, [r for r in rs.rows if r.status != "ok"])
    fig = plots.dashboard(bad)
    assert [ax.get_gid() for ax in fig.axes] == ["panel|speedup", "panel|latency", "panel|batch_scaling", "panel|notes"]
    assert_marked(fig.axes[0], "float8dynamic", "skipped", "batch 4")
    assert not gids(fig.axes[0], "bar|")
    for name in FOR_EVERY_RESULT:
        assert plots.to_png(plots.FIGURES[name].draw(bad))  # renders, nothing to raise about


def with_rows(rs, rows):
    return ResultSet(tuple(rows), rs.environment)


def test_a_run_of_two_devices_is_split_so_its_cells_compare_instead_of_colliding(rs, tmp_path):
    import dataclasses

    cpu = [dataclasses.replace(r, device_name="Test CPU") for r in rs.rows]
    gpu = [dataclasses.replace(r, device_name="Other GPU") for r in other_run().rows]
    env = {"torch": "2.13.0", "devices": {"Test CPU": rs.environment, "Other GPU": other_run().environment}}
    ResultSet((*cpu, *gpu), env).save(tmp_path / "merged")  # what `merge` writes
    runs = runs_mod.load_runs([tmp_path / "merged"])
    assert list(runs) == ["merged · Test CPU", "merged · Other GPU"]
    assert runs["merged · Other GPU"].environment["device"] == "cuda"  # each device keeps its own environment
    df = runs_mod.compare_table(runs)
    cell = df[(df["mode"] == "int8dynamic") & (df["batch_size"] == 1)].iloc[0]
    assert cell["merged · Other GPU / merged · Test CPU latency"] == pytest.approx(0.5)
    assert list(runs_mod.as_runs([ResultSet((*cpu, *gpu), env)])) == ["run 1 · Test CPU", "run 1 · Other GPU"]
