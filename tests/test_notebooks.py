"""Every bundled notebook executes on the CPU with the smallest model; the `notebook` command writes its HTML."""

import json
import re

import nbformat
import pytest

from torchao_nb import cli, models, notebooks
from torchao_nb.env import UserError

SMALLEST = min(models.MODELS.values(), key=lambda s: s.params).name
QUICK = {"model": SMALLEST, "batch_sizes": [1], "compile": False, "fast": True}
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def outputs(nb, kind=None):
    for cell in nb.cells:
        if cell.cell_type == "code":
            for out in cell.outputs:
                if kind is None or out.output_type == kind:
                    yield cell, out


def check_clean(nb) -> None:
    """No cell failed and nothing was written to stderr: library noise stays out of what readers see."""
    assert not list(outputs(nb, "error"))
    stderr = [out.text for _, out in outputs(nb, "stream") if out.name == "stderr"]
    assert not stderr, stderr


def test_stored_notebooks_are_small_and_have_no_outputs():
    assert {"01_quickstart", "02_walkthrough", "03_report"} <= set(notebooks.available())
    for name in notebooks.available():
        path = notebooks.find(name)
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        assert path.stat().st_size < 20_000
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{name}: outputs not stripped"
    quick = nbformat.read(notebooks.find("01_quickstart"), as_version=4)
    assert sum(c.cell_type == "code" for c in quick.cells) == 3


def test_report_and_walkthrough_take_parameters():
    for name in ("02_walkthrough", "03_report"):
        names = notebooks.parameter_names(nbformat.read(notebooks.find(name), as_version=4))
        assert {"model", "batch_sizes", "compile", "fast"} <= set(names)


def test_quickstart_executes_and_shows_the_panel(tmp_path):
    ipynb, html = notebooks.execute("01_quickstart", tmp_path)
    nb = nbformat.read(ipynb, as_version=4)
    check_clean(nb)
    views = [out for _, out in outputs(nb, "execute_result") if WIDGET_VIEW in out.data]
    assert len(views) == 1  # the panel
    assert "application/vnd.jupyter.widget-state+json" in nb.metadata.get("widgets", {})
    assert html.stat().st_size > 1000


def test_walkthrough_executes_with_the_smallest_model(tmp_path):
    ipynb, html = notebooks.execute("02_walkthrough", tmp_path, QUICK)
    nb = nbformat.read(ipynb, as_version=4)
    check_clean(nb)
    pngs = [out for _, out in outputs(nb, "execute_result") if "image/png" in out.data]
    assert len(pngs) == 3  # one Linear's weights; the sweep's dashboard; tuning's price
    tables = "".join(out.data.get("text/html", "") for _, out in outputs(nb, "execute_result"))
    for text in ("epilogue_fusion", "int8weightonly", "warm-up", "compile off", SMALLEST):
        assert text in tables


def test_notebook_command_runs_the_report_and_writes_html(tmp_path, capfd):
    out = tmp_path / "report"
    code = cli.main(["notebook", "03_report", "--model", SMALLEST, "--modes", "noquant,int8dynamic,float8dynamic",
                     "-p", "compile=false", "--fast", "--out", str(out)])  # text, as a shell gives it: False
    err = capfd.readouterr().err  # the kernel's own stderr included
    assert code == 0, err
    assert "without encryption" not in err and err == "", err
    assert {"03_report.ipynb", "03_report.html", "results.csv", "results.json", "environment.json"} <= {p.name for p in out.iterdir()}
    nb = nbformat.read(out / "03_report.ipynb", as_version=4)
    check_clean(nb)
    injected = [c for c in nb.cells if notebooks.INJECTED_TAG in c.metadata.get("tags", [])]
    assert len(injected) == 1 and f"model = {SMALLEST!r}" in injected[0].source
    assert "out = " in injected[0].source  # results land beside the notebook
    assert len([o for _, o in outputs(nb, "execute_result") if "image/png" in o.data]) == 2
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [(r["mode"], r["status"]) for r in rows][:2] == [("noquant", "ok"), ("int8dynamic", "ok")]
    assert all(r["model"] == SMALLEST and r["compile"] is False for r in rows)
    html = (out / "03_report.html").read_text()
    assert html.count("data:image/png;base64") >= 2 and "int8dynamic" in html and "float8dynamic" in html
    # an offline file: no script, stylesheet or image from the network (require.js, MathJax, mermaid, widgets)
    assert not re.search(r"<script[^>]*\bsrc=", html) and not re.search(r"import\(\s*[\"']https?:", html)
    assert not re.search(r"""(src|href)=["'](https?:)?//""", html) and "cdnjs" not in html and "unpkg" not in html


def test_bad_notebook_requests_get_clear_errors(tmp_path, capsys):
    assert cli.main(["notebook", "04_missing", "--out", str(tmp_path)]) == 2
    assert "no notebook '04_missing'" in capsys.readouterr().err and "03_report" in notebooks.available()
    assert cli.main(["notebook", "03_report", "-p", "colour=1", "--out", str(tmp_path)]) == 2
    assert "unknown notebook parameter(s) colour" in capsys.readouterr().err
    assert cli.main(["notebook", "01_quickstart", "--model", "mlp", "--out", str(tmp_path)]) == 2
    assert "no cell tagged 'parameters'" in capsys.readouterr().err
    assert cli.main(["notebook", "03_report", "--batch-sizes", "1,x", "--out", str(tmp_path)]) == 2
    assert "not a whole number" in capsys.readouterr().err
    with pytest.raises(UserError, match="name=value"):
        notebooks.parse_param("oops")
    assert notebooks.parse_param("batch_sizes=[1, 8]") == ("batch_sizes", [1, 8])
    assert notebooks.parse_param("modes=int8dynamic") == ("modes", "int8dynamic")


def test_a_failing_cell_keeps_the_partial_notebook_and_says_so_in_one_line(tmp_path, capsys):
    (tmp_path / "a-file").write_text("x")
    results = tmp_path / "a-file" / "results"  # not a folder anyone can write: the sweep's cell fails
    assert cli.main(["notebook", "03_report", "--model", SMALLEST, "-p", f"out={str(results)!r}", "--fast",
                     "--no-compile", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: a cell of 03_report.ipynb failed (UserError: cannot write results to")
    assert err.count("\n") == 1 and "\x1b[" not in err  # one line, not the cell's coloured traceback
    nb = nbformat.read(tmp_path / "03_report.ipynb", as_version=4)
    errors = [o for _, o in outputs(nb, "error")]
    assert errors and "cannot write results to" in errors[0].evalue


@pytest.mark.parametrize("argv, message", [
    (["--model", "gpt5"], "unknown model 'gpt5'"),
    (["--modes", "int3"], "unknown mode 'int3'"),
    (["-p", "model=5"], "model must be a registry name"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--dtype", "int7"], "unknown dtype 'int7'"),
    (["-p", "batch_sizes=[0]"], "batch size must be a positive integer"),
    (["-p", "compile=maybe"], "compile must be True or False (or the text true/false/yes/no/1/0), got 'maybe'"),
])
def test_bad_parameters_are_caught_before_a_kernel_starts(argv, message, tmp_path, capfd):
    assert cli.main(["notebook", "03_report", *argv, "--out", str(tmp_path)]) == 2
    err = capfd.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []  # no kernel ran, no notebook was written


@pytest.mark.parametrize("text, value", [("false", False), ("False", False), ("no", False), ("0", False),
                                         ("true", True), ("YES", True), ("1", True)])
def test_boolean_parameters_given_as_text_arrive_as_the_bool_they_mean(text, value):
    name, given = notebooks.parse_param(f"compile={text}")
    assert notebooks.check_parameters({name: given}) == {"compile": value}
