import math

import pytest
import torch
from torch import nn

from torchao_nb import measure, modes as modes_mod, ratios
from torchao_nb.env import DeviceInfo


class FakeClock:
    """Time moves only when the measured function says so."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_time_calls_with_a_fake_clock_is_exact():
    clock = FakeClock()

    def step():
        clock.now += 0.003  # every call takes 3 ms

    m = measure.time_calls(step, measure.TimingPolicy(), clock=clock)
    assert m.calls_per_sample == 4  # a 10 ms burst
    assert m.median_ms == pytest.approx(3.0)
    assert m.iqr_ms == pytest.approx(0.0)
    # the median is stable after the first block, so it stops at the second check
    assert len(m.samples_ms) == 20
    assert not m.noisy()


def test_fast_calls_are_batched_into_samples():
    clock = FakeClock()

    def step():
        clock.now += 0.0001  # 0.1 ms: 100 calls make one 10 ms burst

    m = measure.time_calls(step, measure.TimingPolicy(), clock=clock)
    assert m.calls_per_sample == 100
    assert m.median_ms == pytest.approx(0.1)


def test_time_budget_bounds_a_noisy_function():
    clock = FakeClock()
    state = {"i": 0}

    def step():
        state["i"] += 1
        clock.now += (0.010, 0.030, 0.020)[state["i"] % 3]  # never settles

    policy = measure.TimingPolicy(max_time_s=1.0, warmup_s=0.0)
    m = measure.time_calls(step, policy, clock=clock)
    assert len(m.samples_ms) < policy.max_samples
    assert m.noisy(policy)


def test_time_once_calls_sync():
    calls = []
    out, secs = measure.time_once(lambda: 42, clock=FakeClock(), sync=lambda: calls.append(1))
    assert out == 42 and secs == 0 and len(calls) == 2


def test_accuracy_metrics():
    ref = torch.randn(1000)
    noise = 0.01 * torch.randn(1000)
    acc = measure.accuracy(ref, ref + noise)
    expected = 20 * math.log10(ref.norm() / noise.norm())
    assert acc.sqnr_db == pytest.approx(expected, rel=1e-4)
    assert 0.999 < acc.cosine <= 1.0
    assert acc.max_abs_err == pytest.approx(noise.abs().max().item(), rel=1e-5)
    same = measure.accuracy((ref, {"a": ref}), (ref, {"a": ref}))
    assert same.sqnr_db is None and same.cosine == pytest.approx(1.0)


def test_accuracy_rejects_shape_change_and_non_float():
    with pytest.raises(ValueError):
        measure.accuracy(torch.randn(3), torch.randn(4))
    with pytest.raises(ValueError):
        measure.flat_output(torch.arange(3))


def test_weight_bytes_sees_packed_weights():
    model = nn.Sequential(nn.Linear(256, 256, bias=False)).to(torch.bfloat16)
    assert measure.weight_bytes(model) == 256 * 256 * 2
    cpu = DeviceInfo("cpu", "x", None, True)
    modes_mod.quantize(model, modes_mod.MODES["int8weightonly"], cpu, torch.bfloat16)
    q = measure.weight_bytes(model)
    assert 256 * 256 <= q < 256 * 256 * 1.2  # int8 data plus per-channel scales


def test_peak_memory_on_cpu_sees_an_allocation():
    with measure.PeakMemory("cpu") as mem:
        big = torch.ones(64 * 1024 * 1024 // 4)  # 64 MiB, touched
        big += 1
    del big
    assert mem.peak_bytes is not None and mem.peak_bytes >= 48 * 1024 * 1024


def test_peak_memory_on_cpu_is_not_hidden_by_earlier_garbage_collected_inside_the_block():
    import gc

    class Node:
        pass

    junk = Node()
    junk.loop, junk.tensor = junk, torch.ones(128 * 1024 * 1024 // 4) + 1  # freed only by the collector
    del junk
    with measure.PeakMemory("cpu") as mem:
        gc.collect()  # as the collector may run at any allocation inside a cell
        big = torch.ones(64 * 1024 * 1024 // 4)
        big += 1
    del big
    assert mem.peak_bytes is not None and mem.peak_bytes >= 48 * 1024 * 1024


def test_time_paired_interleaves_and_is_exact_with_a_fake_clock():
    clock = FakeClock()
    order = []

    def a():
        order.append("a")
        clock.now += 0.004

    def b():
        order.append("b")
        clock.now += 0.002

    ma, mb = measure.time_paired(a, b, measure.TimingPolicy(warmup_s=0.0, lead_s=0.0, burst_s=0.0), clock=clock)
    assert ma.median_ms == pytest.approx(4.0) and mb.median_ms == pytest.approx(2.0)
    assert len(ma.samples_ms) == len(mb.samples_ms) == 20  # both settle at the second check
    timed = order[-80:]  # each window: one untimed call, then the timed one
    assert timed == ["a", "a", "b", "b", "b", "b", "a", "a"] * 10  # windows alternate, each in each position as often


def test_time_paired_shares_a_drift_between_both():
    """The machine slows down half-way: separate timings would disagree, paired ones keep the ratio."""
    clock = FakeClock()
    calls = {"n": 0}

    def work(ms):
        def fn():
            calls["n"] += 1
            slow = 1.5 if calls["n"] > 40 else 1.0
            clock.now += ms * slow / 1e3
        return fn

    ma, mb = measure.time_paired(work(4.0), work(2.0), measure.TimingPolicy(warmup_s=0.0, min_samples=40, block=40), clock=clock)
    assert ma.median_ms / mb.median_ms == pytest.approx(2.0, rel=0.05)


def test_every_function_takes_every_position_equally_often():
    clock = FakeClock()
    order = []

    def work(name, ms):
        def fn():
            order.append(name)
            clock.now += ms / 1e3
        return fn

    fns = [work("a", 3.0), work("b", 3.0), work("c", 3.0)]
    ms = measure.time_interleaved(fns, measure.TimingPolicy(warmup_s=0.0, min_warmup=1, lead_s=0.0, burst_s=0.0),
                                  clock=clock)
    rounds = len(ms[0].samples_ms)
    assert rounds % 3 == 0
    timed = order[-6 * rounds:][::2]  # one window per function and round, each an untimed call and a timed one
    for name in "abc":
        positions = [timed[3 * r: 3 * r + 3].index(name) for r in range(rounds)]
        assert [positions.count(p) for p in range(3)] == [rounds // 3] * 3


def test_a_position_bias_cancels_in_the_paired_ratio():
    """The machine is 10 % faster for whatever runs last in a round; two equal functions still read 1.00."""
    clock = FakeClock()
    state = {"i": 0}

    def fn():
        state["i"] += 1
        last = state["i"] % 2 == 0  # two functions: every second call is the last of its round
        clock.now += (0.9 if last else 1.0) * 2e-3

    a, b = measure.time_interleaved([fn, fn], measure.TimingPolicy(warmup_s=0.0, min_warmup=1, lead_s=0.0, burst_s=0.0),
                                    clock=clock)
    r = ratios.paired_ratio(a, b)
    assert r.lo <= 1.0 <= r.hi and not r.clear
    assert a.median_ms == pytest.approx(b.median_ms, rel=0.06)


def test_paired_ratio_and_its_interval():
    base = measure.Measurement(tuple(2.0 + 0.01 * (i % 7) for i in range(60)), 1)
    fast = measure.Measurement(tuple(1.0 + 0.005 * (i % 7) for i in range(60)), 1)
    r = ratios.paired_ratio(base, fast)
    assert r.value == pytest.approx(2.0, rel=1e-6) and r.lo <= r.value <= r.hi and r.clear
    assert ratios.paired_ratio(base, fast) == r  # seeded: the same samples give the same interval
    noisy = measure.Measurement(tuple(1.0 + (0.3 if i % 2 else -0.3) for i in range(60)), 1)
    same = measure.Measurement(tuple(1.0 for _ in range(60)), 1)
    wide = ratios.paired_ratio(noisy, same)
    assert wide.lo < 1.0 < wide.hi and not wide.clear


def test_the_calls_after_a_switch_run_untimed():
    """A function's first calls after another's are slow (caches hold the other's data): the lead absorbs them."""
    clock = FakeClock()
    state = {"last": None, "streak": 0}

    def work(name, ms):
        def fn():
            state["streak"] = state["streak"] + 1 if state["last"] == name else 0
            state["last"] = name
            clock.now += ms * (3.0 if state["streak"] < 3 else 1.0) / 1e3  # 3 slow calls after each switch
        return fn

    policy = measure.TimingPolicy(warmup_s=0.05, replicates=1)
    a, b = measure.time_interleaved([work("a", 2.0), work("b", 1.0)], policy, clock=clock)
    assert a.median_ms == pytest.approx(2.0) and b.median_ms == pytest.approx(1.0)
    short = measure.TimingPolicy(warmup_s=0.05, lead_s=0.0, burst_s=0.004)  # one untimed call only
    a, b = measure.time_interleaved([work("a", 2.0), work("b", 1.0)], short, clock=clock)
    assert a.median_ms > 2.5 and b.median_ms > 1.4  # what the 2 ms samples of earlier versions measured


def _replicate(median: float, n: int = 40) -> measure.Measurement:
    return measure.Measurement(tuple(median * (1 + 0.002 * ((i * 7) % 5 - 2)) for i in range(n)), 1)


def test_replicates_that_differ_widen_the_interval_and_identical_ones_do_not():
    base = [_replicate(2.0), _replicate(2.0), _replicate(2.0)]
    same = ratios.paired_ratio(base, [_replicate(1.0), _replicate(1.0), _replicate(1.0)])
    alone = ratios.paired_ratio(base[0], _replicate(1.0))
    assert same.value == pytest.approx(2.0, rel=1e-3)
    assert same.hi - same.lo == pytest.approx(alone.hi - alone.lo, rel=0.5)  # no wider than one copy's rounds
    differ = ratios.paired_ratio(base, [_replicate(0.96), _replicate(1.0), _replicate(1.04)])
    assert differ.hi - differ.lo > 3 * (same.hi - same.lo)
    assert differ.lo < 2.0 / 1.02 and differ.hi > 2.0 / 0.98  # spans most of what the copies read
    assert ratios.paired_ratio(base, [_replicate(0.96), _replicate(1.0), _replicate(1.04)]) == differ  # seeded


def test_every_interval_carries_what_varies_between_runs():
    rel = ratios.BETWEEN_RUNS_REL
    calm = ratios.across_runs(ratios.Ratio(2.0, 1.996, 2.004))  # one calm minute: +-0.2 %
    assert calm.value == 2.0
    assert 2.0 * (1 - rel) * 0.995 < calm.lo < 2.0 * (1 - rel) * 1.005  # about +-rel, no narrower
    assert 2.0 * (1 + rel) * 0.995 < calm.hi < 2.0 * (1 + rel) * 1.005
    wide = ratios.Ratio(2.0, 1.5, 2.2)  # rounds that saw the machine move: barely wider, and still lopsided
    moved = ratios.across_runs(wide)
    assert 1.49 < moved.lo < 1.5 and 2.2 < moved.hi < 2.21 and moved.value - moved.lo > moved.hi - moved.value
    assert ratios.across_runs(wide, 0.0) == wide
    aa = ratios.across_runs(ratios.Ratio(1.001, 0.995, 1.006))  # an A/A stays "no clear difference"
    assert not aa.clear and aa.lo < 0.975 and aa.hi > 1.025


def test_a_cold_window_flushes_before_each_single_call():
    clock = FakeClock()
    calls = []

    def fn():
        calls.append(clock.now)
        clock.now += 0.001

    window = measure.host_cold_window(1 << 20, clock)
    assert window.one_call and window.cache == "cold"
    m = measure.time_interleaved([fn], measure.TimingPolicy(warmup_s=0.0), clock=clock, window=window)
    assert m[0].calls_per_sample == 1 and m[0].median_ms == pytest.approx(1.0)
    assert measure.host_window(clock).cache == "warm"


def test_one_unlucky_copy_widens_the_interval_but_does_not_move_the_value():
    """Measured: one of three compiled copies of the demo read 40 % slower (memory placement) in 2 of 3 processes."""
    same = [_replicate(1.0), _replicate(1.0), _replicate(1.0)]
    r = ratios.paired_ratio([_replicate(1.0), _replicate(1.0), _replicate(1.4)], same)
    assert r.value == pytest.approx(1.0, rel=0.01)  # the A/A still reads 1.00
    assert r.hi > 1.3  # but the interval admits what the unlucky copy read
    assert ratios.per_round([_replicate(1.0), _replicate(1.0), _replicate(1.4)]).median_ms == pytest.approx(1.0, rel=0.01)


def _settling_work(clock):
    """Functions on a fake clock whose first `settle_calls` calls after another function's run 30 % slower."""
    state = {"last": None, "streak": 0}

    def work(name, ms, settle_calls):
        def fn():
            state["streak"] = state["streak"] + 1 if state["last"] == name else 0
            state["last"] = name
            slow = 1.3 if state["streak"] < settle_calls else 1.0
            clock.now += ms * slow / 1e3
        return fn
    return work


def test_a_function_still_settling_after_a_switch_is_told_apart_from_a_steady_one():
    """float8 weight-only on a CPU: 6.5 ms per call after the baseline, 6.0 after 12 calls, 5.2 after a second."""
    clock = FakeClock()
    work = _settling_work(clock)
    window = measure.host_window(clock)
    other = work("base", 2.0, 0)
    switched, settled = measure.after_switch(work("slow", 5.0, 10), other, 5.0, measure.TimingPolicy(), window)
    assert switched == pytest.approx(6.5) and settled == pytest.approx(5.0)
    switched, settled = measure.after_switch(work("quick", 1.0, 3), other, 1.0, measure.TimingPolicy(), window)
    assert switched == pytest.approx(settled)  # its 3 slow calls fall inside the untimed lead


def test_a_function_slow_to_settle_is_led_into_its_steady_state_in_the_rounds():
    """On the quiet Xeon float8 weight-only read 4.41-4.74 ms per call in rounds and 4.10 settled, so its speedup
    was 11 % under torch.utils.benchmark's; a longer lead for that side alone times what a loop would see."""
    clock = FakeClock()
    work = _settling_work(clock)
    window = measure.host_window(clock)
    base, slow, quick = work("base", 2.0, 0), work("slow", 5.0, 10), work("quick", 1.0, 3)
    policy = measure.TimingPolicy(min_samples=12, max_samples=12)
    needs = measure.settling(slow, base, 5.0, policy, window)
    assert needs.lengthened and needs.lead_s == measure.SETTLE_S and needs.switched_ms > needs.settled_ms
    assert measure.settling(quick, base, 1.0, policy, window).lead_s == policy.lead_s
    short = measure.time_interleaved([base, slow], policy, clock, window=window)
    led = measure.time_interleaved([base, slow], policy, clock, window=window, leads_s=[policy.lead_s, needs.lead_s])
    assert short[1].median_ms == pytest.approx(6.5) and led[1].median_ms == pytest.approx(5.0)
    assert led[0].median_ms == pytest.approx(2.0)  # the other side's bursts are untouched


def test_other_processes_cpu_is_the_machines_busy_time_less_this_process(monkeypatch):
    from torchao_nb import env

    clock = {"wall": 100.0, "all": 50.0, "mine": 10.0}
    monkeypatch.setattr(env.time, "monotonic", lambda: clock["wall"])
    monkeypatch.setattr(env, "_cpu_busy_s", lambda: clock["all"])
    monkeypatch.setattr(env, "_own_cpu_s", lambda: clock["mine"])
    monkeypatch.setattr(env.os, "sched_getaffinity", lambda pid: {0, 1})
    with env.OtherLoad() as load:
        clock.update(wall=110.0, all=50.0 + 2 * 10 * 0.95, mine=10.0 + 10 * 1.0)  # we took a core, others 0.9
    assert load.cores == pytest.approx(0.9) and load.share == pytest.approx(0.45) and load.share > env.BUSY_SHARE
    with env.OtherLoad() as quiet:
        clock.update(wall=120.0, all=clock["all"] + 20.0, mine=clock["mine"] + 20.0)  # only us
    assert quiet.cores == pytest.approx(0.0)


def test_with_sides_what_settles_is_each_sides_median_over_copies():
    """One of three copies drifts for ever; the side's per-round median over copies does not: it settles."""
    clock = FakeClock()
    state = {"n": 0}

    def steady():
        clock.now += 0.002

    def drifting():
        state["n"] += 1
        clock.now += 0.002 * (1 + 0.01 * state["n"])  # 1 % slower every call: its own median never settles

    policy = measure.TimingPolicy(warmup_s=0.0, lead_s=0.0, burst_s=0.0, max_time_s=1.0)
    alone = measure.time_interleaved([drifting, steady, steady], policy, clock=clock)
    state["n"] = 0
    pooled = measure.time_interleaved([drifting, steady, steady], policy, clock=clock, sides=[[0, 1, 2]])
    assert len(pooled[0].samples_ms) < len(alone[0].samples_ms)
    assert len(pooled[0].samples_ms) == 21  # settled at the second check


def test_rounds_that_drift_are_resampled_in_blocks_and_widen_the_interval():
    """A ratio that moves with the machine for stretches of rounds (the demo on a shared 2-core VM) is not 60
    independent rounds: the same values in a drifting order give a wider interval than shuffled."""
    import random

    series = [2.0 * (1 + 0.15 * math.sin(2 * math.pi * i / 30 + 0.3)) * (1 + 0.004 * ((i * 7) % 5 - 2)) for i in range(60)]
    mixed = series[:]
    random.Random(0).shuffle(mixed)
    assert ratios.block_length(series) > 5 and ratios.block_length(mixed) == 1
    same = measure.Measurement(tuple(1.0 for _ in range(60)), 1)
    drifting = ratios.paired_ratio(measure.Measurement(tuple(series), 1), same)
    shuffled = ratios.paired_ratio(measure.Measurement(tuple(mixed), 1), same)
    assert drifting.value == pytest.approx(shuffled.value)
    assert drifting.hi - drifting.lo > 1.5 * (shuffled.hi - shuffled.lo)
    assert drifting.lo < 1.85 and drifting.hi > 2.2  # it admits most of what the rounds met


def test_drift_is_the_spread_of_the_rounds_stretch_medians():
    samples = [1.0] * 20 + [1.5] * 20
    assert ratios.drift(samples) == (1.0, 1.5)
    assert ratios.drift([1.0] * 19) is None  # too few rounds to say
