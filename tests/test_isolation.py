"""Cells in a supervised worker process: a crash, a hang or a wrong output costs one row, never the sweep or this process."""

import ctypes
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import torchao_nb
from torchao_nb import executors, measure, sending, tables
from torchao_nb.results import read_jsonl

X = (torch.randn(2, 128),)
SEVEN = ["float8weightonly", "noquant", "int8dynamic", "int8weightonly", "int4weightonly", "float8dynamic", "autoquant"]


def quantized_as(weight) -> str:
    """Which mode made this weight (torchao 0.18's tensor types), or noquant."""
    name = type(weight).__name__
    if name == "Int8Tensor":
        return "int8dynamic" if getattr(weight, "act_quant_kwargs", None) is not None else "int8weightonly"
    return {"Float8Tensor": "float8weightonly", "Parameter": "noquant"}.get(name, name)


def _segfault(module, x):
    ctypes.string_at(0)  # reads address 0: a real SIGSEGV, as a broken kernel gives


def _hang(module, x):
    Path(module.marker).write_text("started")
    while True:
        time.sleep(0.05)


BEHAVIOURS = {
    "segfault": _segfault,
    "hang": _hang,
    "nan": lambda module, x: module.fc(x) * float("nan"),
    "garbage": lambda module, x: torch.randn_like(module.fc(x)) * 10,
    # Wrong only in the compiled graph: what a compiler bug looks like from outside.
    "compiled-garbage": lambda module, x: (module.fc(x).flip(-1) * 3) if torch.compiler.is_compiling() else module.fc(x),
}


class Misbehaves(nn.Module):
    """A Linear that misbehaves (`how`) once `mode` has quantized it; otherwise an ordinary Linear."""

    def __init__(self, mode: str, how: str, marker: str = ""):
        super().__init__()
        self.mode, self.how, self.marker = mode, how, marker
        self.fc = nn.Linear(128, 128)

    def forward(self, x):
        if quantized_as(self.fc.weight) == self.mode:
            return BEHAVIOURS[self.how](self, x)
        return self.fc(x)


def run(model, modes, **kw):
    kw = {"device": "cpu", "dtype": "bfloat16", "compile": False, "progress": False, "policy": measure.FAST_POLICY,
          "example_inputs": X, **kw}
    return torchao_nb.sweep(model=model, modes=modes, **kw)


def by_mode(rs):
    return {r.mode: r for r in rs}


def test_a_crash_in_the_first_cell_costs_that_row_only_and_resume_keeps_it(tmp_path):
    model = Misbehaves("float8weightonly", "segfault")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rs = run(model, SEVEN, out=tmp_path, autoquant={"candidates": ["int8weightonly", "int8dynamic"]})
    rows = by_mode(rs)
    assert list(rows) == SEVEN
    crashed = rows["float8weightonly"]
    assert crashed.status == "error" and "worker crashed (SIGSEGV) while running float8weightonly" in crashed.reason
    assert "Segmentation fault" in crashed.extra_dict["worker_log"]  # faulthandler's stack, kept with the row
    for mode in ["noquant", "int8dynamic", "int8weightonly", "int4weightonly", "autoquant"]:
        assert rows[mode].status == "ok" and rows[mode].median_ms > 0, (mode, rows[mode].reason)
    assert rows["float8dynamic"].status == "skipped"
    assert rs.environment["isolation"] == "worker process"
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the user's model is untouched
    assert type(model.fc.weight) is nn.Parameter

    again = run(model, SEVEN, out=tmp_path, resume=True, autoquant={"candidates": ["int8weightonly", "int8dynamic"]})
    assert again.rows == rs.rows  # every row re-used, the crashed cell included: nothing ran again
    assert len(read_jsonl(tmp_path / "rows.jsonl")) == 7


def test_a_crash_of_the_unquantized_model_is_every_cells_row():
    rs = run(Misbehaves("noquant", "segfault"), "noquant,int8dynamic")
    assert [r.status for r in rs] == ["error", "error"]
    for r in rs:
        assert r.reason.startswith("the unquantized model failed: worker crashed (SIGSEGV) while computing")


def test_a_hang_becomes_an_error_row_at_the_cell_time_limit(tmp_path):
    rs = run(Misbehaves("int8weightonly", "hang", str(tmp_path / "started")), "int8weightonly,int8dynamic",
             cell_timeout_s=10)
    rows = by_mode(rs)
    assert rows["int8weightonly"].status == "error"
    assert "timed out after 10 s while running int8weightonly" in rows["int8weightonly"].reason
    assert rows["int8dynamic"].status == "ok"


@pytest.mark.parametrize("how, says", [("nan", "NaN or infinite"), ("garbage", "SQNR -")])
def test_a_wrong_output_is_a_wrong_row_never_a_speedup(how, says):
    rows = by_mode(run(Misbehaves("int8weightonly", how), "int8weightonly,int8dynamic"))
    wrong = rows["int8weightonly"]
    assert wrong.status == "wrong" and "output wrong" in wrong.reason and says in wrong.reason
    assert wrong.speedup is None and wrong.median_ms is None
    assert rows["int8dynamic"].status == "ok"
    text = tables.text(rs := torchao_nb.ResultSet((wrong,)))
    assert "wrong" in text and "×" not in text  # no speedup is printed for it
    assert rs.rows[0].reason in text


@pytest.mark.slow
def test_a_compiled_output_that_eager_gets_right_is_blamed_on_the_compiler():
    rows = by_mode(run(Misbehaves("int8weightonly", "compiled-garbage"), "int8weightonly,noquant", compile=True))
    wrong = rows["int8weightonly"]
    assert wrong.status == "wrong", wrong.reason
    assert "compiled output wrong" in wrong.reason and "a compiler or kernel bug on this machine" in wrong.reason
    assert wrong.extra_dict["eager_sqnr_db"] > 30
    assert rows["noquant"].status == "ok"


def test_stop_ends_the_cell_in_progress(tmp_path):
    marker = tmp_path / "started"
    stop = threading.Event()
    result = {}
    # each cell alone, so a row is saved as soon as it is timed (together, the group's rows come at its end)
    thread = threading.Thread(target=lambda: result.update(rs=run(
        Misbehaves("int8weightonly", "hang", str(marker)), "noquant,int8weightonly,int8dynamic", stop=stop,
        time_together=False)))
    thread.start()
    for _ in range(6000):  # the worker writes the marker once the hanging cell runs
        if marker.exists():
            break
        thread.join(0.05)
    assert marker.exists()
    stop.set()
    thread.join(120)
    assert not thread.is_alive()
    assert [r.mode for r in result["rs"]] == ["noquant"]  # the stopped cell left no row, the next never started


class Handle:
    """Copies to itself (as a connection or device handle may) but can't be pickled."""

    def __deepcopy__(self, memo):
        return self

    def __reduce__(self):
        raise TypeError("a Handle can't be pickled")


def test_a_module_that_cannot_be_sent_runs_in_process_with_a_warning():
    model = Misbehaves("none", "nan")
    model.handle = Handle()
    with pytest.warns(RuntimeWarning, match="can't be sent to a worker process"):
        rs = run(model, "noquant")
    assert rs.rows[0].status == "ok" and rs.environment["isolation"] == "in-process"


def test_a_module_that_cannot_be_copied_is_one_line_naming_the_attribute(tmp_path):
    model = Misbehaves("none", "nan")
    model.fc.guard = threading.Lock()
    with pytest.raises(torchao_nb.UserError, match=r"move fc.guard \(lock\) out of the module") as e:
        run(model, "noquant", out=tmp_path / "out")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()  # refused before anything ran


def test_the_worker_is_reused_by_the_next_sweep():
    run(Misbehaves("none", "nan"), "noquant")
    idle = [w for w in executors._IDLE if w.alive]
    assert idle
    pid = idle[-1].proc.pid
    run(Misbehaves("none", "nan"), "noquant")
    assert any(w.proc.pid == pid for w in executors._IDLE)


SCRIPT = textwrap.dedent('''
    import ctypes, json, sys
    import torch
    from torch import nn
    import torchao_nb
    from torchao_nb.measure import FAST_POLICY

    class Net(nn.Module):  # defined in __main__: it travels to the worker by value
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(1000, 3000)

        def forward(self, x):
            w = self.fc.weight
            if type(w).__name__ == "Int8Tensor" and getattr(w, "act_quant_kwargs", None) is None:
                ctypes.string_at(0)  # stands in for the kernel that crashes on some CPUs
            return self.fc(x)

    if __name__ == "__main__":
        m = Net().to(torch.bfloat16)
        before = m.fc.weight.detach().clone()
        rs = torchao_nb.sweep(model=m, example_inputs=(torch.randn(2, 1000, dtype=torch.bfloat16),),
                              modes="noquant,int8weightonly,int8dynamic", device="cpu", dtype="bfloat16",
                              compile=False, progress=False, policy=FAST_POLICY)
        print(json.dumps({"rows": [(r.mode, r.status, r.reason, r.batch_size) for r in rs],
                          "untouched": bool(torch.equal(before, m.fc.weight)) and type(m.fc.weight) is nn.Parameter}))
''')


def test_a_users_main_script_survives_a_crashing_kernel(tmp_path):
    script = tmp_path / "user_script.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    rows = {mode: (status, reason, batch) for mode, status, reason, batch in out["rows"]}
    assert rows["int8weightonly"][0] == "error" and "worker crashed (SIGSEGV)" in rows["int8weightonly"][1]
    assert rows["noquant"][0] == "ok" and rows["int8dynamic"][0] == "ok"
    assert {batch for _, _, batch in rows.values()} == {2}  # the inputs' own batch
    assert out["untouched"]


def test_an_error_from_sending_the_model_says_how_to_get_around_it():
    row = by_mode(run(Misbehaves("none", "nan"), "noquant")).get("noquant")
    broken = sending.with_sending_help(
        __import__("dataclasses").replace(row, status="error", reason="AttributeError: module '__main__' has no attribute 'F'"))
    assert "isolate=False (--in-process)" in broken.reason and "importable file" in broken.reason
    assert sending.with_sending_help(row) is row  # an ok row is left as it is


class Bomb(nn.Linear):
    """A Linear whose kernel crashes once int8 weight-only has quantized it: what a broken kernel does."""

    def forward(self, x):
        if quantized_as(self.weight) == "int8weightonly":
            ctypes.string_at(0)
        return super().forward(x)


class OneBadLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.safe, self.bomb = nn.Linear(128, 256), Bomb(256, 128)

    def forward(self, x):
        return self.bomb(torch.relu(self.safe(x)))


def test_a_candidate_that_crashes_on_one_layer_costs_that_candidate_there_only(tmp_path):
    rs = run(OneBadLayer(), "noquant,autoquant",
             autoquant={"candidates": ["int8weightonly", "int8dynamic"], "cache_dir": str(tmp_path)})
    row = by_mode(rs)["autoquant"]
    assert row.status == "ok", row.reason
    layers = {t["layer"]: t for t in row.extra_dict["autoquant"]["layers"]}
    crashed = layers["bomb"]["candidates"]["int8weightonly"]
    assert crashed["status"] == "crashed" and "SIGSEGV" in crashed["note"] and crashed["ms"] is None
    assert layers["bomb"]["choice"] != "int8weightonly"
    # The search went on there and on the other layer (what this CPU's kernels then did is theirs to say).
    assert layers["bomb"]["candidates"]["int8dynamic"]["status"] != "crashed"
    assert layers["safe"]["candidates"]["int8weightonly"]["status"] != "crashed"


CALLS = {"n": 0}


class CrashesWhileTimed(nn.Module):
    """Fine while it is quantized, compiled, checked and copied; int8 weight-only's forward crashes on its 6th call
    in a process, which falls inside the rounds that time a group's modes together."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(128, 128)

    def forward(self, x):
        if quantized_as(self.fc.weight) == "int8weightonly":
            CALLS["n"] += 1
            if CALLS["n"] >= 6:
                ctypes.string_at(0)
        return self.fc(x)


def test_a_crash_while_the_group_is_timed_together_costs_one_row_and_the_others_are_timed_alone():
    rows = by_mode(run(CrashesWhileTimed(), "noquant,int8weightonly,int8dynamic"))
    assert rows["int8weightonly"].status == "error"
    assert "worker crashed (SIGSEGV) while timing int8weightonly" in rows["int8weightonly"].reason
    for mode in ("noquant", "int8dynamic"):
        assert rows[mode].status == "ok" and rows[mode].speedup
        assert "timed alone" in tables.text([rows[mode]])  # the note says why it was not timed with its group


@pytest.mark.parametrize("given, asked", [(None, "yes"), ("0", "no")])
def test_a_worker_puts_torch_memory_on_huge_pages_unless_the_user_chose(given, asked, monkeypatch, two_linear):
    if given is None:
        monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    else:
        monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", given)
    executors._stop_idle_workers()  # the next worker starts with this environment
    try:
        rs = torchao_nb.sweep(two_linear, modes="noquant", example_inputs=(torch.randn(2, 128),), compile=False,
                              policy=measure.FAST_POLICY, save_reload=False, progress=False)
    finally:
        executors._stop_idle_workers()
    pages = rs.environment["memory_pages"]
    system = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    mode = system.read_text().split("[")[1].split("]")[0] if system.exists() else None
    if mode in ("madvise", "always"):  # what the worker's allocator was told, as the environment says it
        assert f"torch asks for them: {asked}" in pages or (asked == "no" and "is not 1" in pages), pages
    else:
        assert pages.startswith(("4 KiB pages", "unknown")), pages
