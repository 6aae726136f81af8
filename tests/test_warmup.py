"""--compile-workers: helper processes compile a group's cells first, the worker compiles them again from the caches
the helpers filled and times them with no helper running; a helper that crashes costs its cell a cold compile."""

import os
import signal

import pytest
import torch
from .conftest import TwoLinear

from torchao_nb import cell, compiling, config, executors, measure, rounds, sweep, warmup
from torchao_nb import env as envmod
from torchao_nb.extras import Extras, Warmed

MODES = "noquant,int8weightonly,int4weightonly"
SMALL = dict(modes=MODES, device="cpu", dtype="bfloat16", policy=measure.FAST_POLICY, save_reload=False,
             progress=False)


def fresh_worker(monkeypatch, cache_dir):
    """The next sweep's worker (and its helpers) start now, with empty inductor caches."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(cache_dir))
    executors._stop_idle_workers()


class CrashesInHelper(TwoLinear):
    """Runs in the worker; dies of SIGSEGV in a compile helper, as a kernel that crashes on one process's first
    call would."""

    def forward(self, x):
        if warmup.in_helper():
            os.kill(os.getpid(), signal.SIGSEGV)
        return super().forward(x)


def warmed(row) -> Warmed | None:
    return Extras.parse(row.extra).of(Warmed)


def test_two_helpers_fill_the_caches_the_worker_then_compiles_from(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model, x = TwoLinear(), (torch.randn(4, 128),)
    fresh_worker(monkeypatch, tmp_path / "cold")
    try:
        cold = sweep(model, example_inputs=x, **SMALL).rows
        fresh_worker(monkeypatch, tmp_path / "helped")
        helped = sweep(model, example_inputs=x, compile_workers=2, **SMALL).rows
    finally:
        executors._stop_idle_workers()
    assert [r.status for r in cold] == [r.status for r in helped] == ["ok"] * 3
    for row in cold:  # without helpers, each cell's first compile misses the empty cache
        assert "miss" in row.fx_cache and warmed(row) is None, (row.mode, row.fx_cache)
    for row in helped:
        note = warmed(row)
        assert note is not None and note.compile_warmup.startswith("compiled first in a helper process"), row.extra
        assert note.helper_compile_s > 0 and note.helper_peak_bytes is not None
        assert "hit" in row.fx_cache and "miss" not in row.fx_cache, (row.mode, row.fx_cache)
    assert [r.mode for r in helped] == MODES.split(",")  # rows in the cells' order


def test_a_helper_that_crashes_costs_its_cell_a_cold_compile_not_its_row(tmp_path, monkeypatch):
    torch.manual_seed(0)
    fresh_worker(monkeypatch, tmp_path / "cold")
    try:
        rows = sweep(CrashesInHelper(), example_inputs=(torch.randn(4, 128),), compile_workers=2, **SMALL).rows
    finally:
        executors._stop_idle_workers()
    assert [r.status for r in rows] == ["ok"] * 3, [r.reason for r in rows]
    for row in rows:
        note = warmed(row)
        assert note is not None and "crashed (SIGSEGV)" in note.compile_warmup, row.extra
        assert note.compile_warmup.endswith("compiled cold here") and "miss" in row.fx_cache


# ---- the plan and the schedule, in this process (fake helpers) ------------------------------------------------

@pytest.fixture
def group(two_linear):
    cfg = config.build(MODES.split(","), True, False, device="cpu", dtype=torch.float32, policy=measure.FAST_POLICY,
                       save_reload=False, compile_workers=2)
    from torchao_nb.reference import ModelSource
    ref = cell.build_reference(cfg, ModelSource("two", two_linear, (torch.randn(4, 128),)), 4, None)
    return cfg, ref


def test_the_plan_follows_the_cores_and_the_memory_a_helper_needs(group, monkeypatch):
    cfg, ref = group
    need = warmup.WEIGHT_FACTOR * measure.weight_bytes(ref.module) + warmup.PROCESS_BYTES["cpu"]
    monkeypatch.setattr(warmup, "cpu_cores", lambda: 8)
    monkeypatch.setattr(envmod, "free_memory_bytes", lambda device: 64 * need)
    assert warmup.plan(cfg, ref, 3) == (2, None)
    assert warmup.plan(cfg, ref, 1) == (1, None)  # no more helpers than cells
    monkeypatch.setattr(warmup, "cpu_cores", lambda: 1)
    assert warmup.plan(cfg, ref, 3) == (1, "1 CPU core(s)")
    monkeypatch.setattr(warmup, "cpu_cores", lambda: 8)
    monkeypatch.setattr(envmod, "free_memory_bytes", lambda device: 3 * need)  # half of it holds one helper
    n, why = warmup.plan(cfg, ref, 3)
    assert n == 1 and "half the free cpu memory" in why
    assert warmup.plan(cfg, ref, 3, running=1)[0] == 2  # a running helper's memory is no longer free: it is its own
    monkeypatch.setattr(envmod, "free_memory_bytes", lambda device: need)
    assert warmup.plan(cfg, ref, 3)[0] == 0
    monkeypatch.setattr(envmod, "free_memory_bytes", lambda device: 64 * need)
    assert warmup.plan(cfg, ref, 3, need=40 * need)[0] == 0  # what a helper measured replaces the estimate


def test_a_helper_that_cannot_start_leaves_its_cell_to_the_worker(group):
    cfg, ref = group
    rows = []

    def spawn(fn, args):
        raise OSError("no more processes")

    with torch.no_grad(), compiling.maybe_compiled(ref.compile):
        cell.run_group(cfg, ref, ["int8weightonly"], 4, rows.append, spawn=spawn)
    assert rows[0].status == "ok"
    assert warmed(rows[0]).compile_warmup == ("not warmed: no helper could start (OSError: no more processes); "
                                              "compiled cold here")


class FakeJob:
    """A helper that finishes after a few polls, counting how many run at once."""

    running = 0
    most = 0

    def __init__(self, mode):
        self.mode, self.polls = mode, 0
        FakeJob.running += 1
        FakeJob.most = max(FakeJob.most, FakeJob.running)

    def result(self, timeout_s=0.0):
        self.polls += 1
        if self.polls < 3:
            return False, None
        FakeJob.running -= 1
        return True, dict(compile_s=0.5, peak_bytes=1000)

    def kill(self):
        FakeJob.running -= 1


def test_no_helper_runs_while_a_cell_is_timed(group, monkeypatch):
    cfg, ref = group
    started = []

    def spawn(fn, args):
        started.append(args[-1])
        return FakeJob(args[-1])

    timed_with = []
    real = rounds.time_modes
    monkeypatch.setattr(rounds, "time_modes", lambda *a: timed_with.append(FakeJob.running) or real(*a))
    FakeJob.running = FakeJob.most = 0
    rows = []
    with torch.no_grad(), compiling.maybe_compiled(ref.compile):
        cell.run_group(cfg, ref, MODES.split(","), 4, rows.append, together=False, spawn=spawn)
    assert sorted(started) == sorted(MODES.split(","))  # in-process cells: no worker, but the fakes stand in
    assert [r.status for r in rows] == ["ok"] * 3 and timed_with == [0, 0, 0]
    assert FakeJob.most <= 2 and FakeJob.running == 0
    assert all(warmed(r).helper_compile_s == 0.5 for r in rows)


def test_a_cell_too_large_for_any_helper_says_so(group, monkeypatch):
    cfg, ref = group
    monkeypatch.setattr(envmod, "free_memory_bytes", lambda device: 1 << 20)
    rows = []
    with torch.no_grad(), compiling.maybe_compiled(ref.compile):
        cell.run_group(cfg, ref, ["int8weightonly"], 4, rows.append, spawn=lambda fn, args: pytest.fail("spawned"))
    note = warmed(rows[0])
    assert note.compile_warmup.startswith("not warmed: no compile helper could run (each needs ~")
    assert "half the free cpu memory" in note.compile_warmup


def test_compile_workers_is_a_count():
    with pytest.raises(Exception, match="compile_workers must be a whole number, 0 or more"):
        config.build(["noquant"], False, False, device="cpu", compile_workers=-1)
