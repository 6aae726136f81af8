"""Why a GPU row is off: host cost per call against GPU time per call, and A/A pairs, on the 8B-shaped proxy.

    python benchmarks/gpu_probe.py [--budget-s 200] [--out FILE.json]

For compiled copies of llama-8b-shapes' decode step (CUDA graphs), prints per callable:
- gpu_ms: GPU time per call of 50 back-to-back calls (CUDA events);
- host_us: what enqueuing one call costs the host, measured while a long sleep kernel keeps the GPU busy
  (so no back-pressure hides it). host_us above gpu_ms*1000 means the step is host-bound: the GPU idles.
Then A/A pairs timed as the sweep times them (rounds, rotation, paired ratios), with and without an untimed
call at the start of each window, and int4 with dynamo's inlined modules off. Experiments run in order
until the budget is spent; each prints as it finishes.

For each quantized callable (int4, int8 and float8 weight-only) it also records what explains a host-bound row:
cudagraph_skips and torch's words for each skip (a skipped graph replays kernel by kernel from the host), the
graphs and recompiles of its compile, and host_top: where the host's time per call goes (the CPU-side profiler's
top operators: dynamo's guards, AOTAutograd's unwrapping of tensor subclasses, kernel launches).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from torchao_nb import compiling, env, measure, models, ratios  # noqa: E402
from torchao_nb import modes as modes_mod  # noqa: E402
from torchao_nb._torchao import quiet_logs  # noqa: E402

RESULTS: dict = {}


def host_and_gpu(fn, n: int = 50) -> dict:
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        fn()
    end.record()
    end.synchronize()
    gpu_ms = start.elapsed_time(end) / n
    torch.cuda._sleep(int(2e9 * 0.2))  # ~0.2 s of GPU work: the host enqueues without waiting
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    host_us = (time.perf_counter() - t0) / n * 1e6
    torch.cuda.synchronize()
    return {"gpu_ms": round(gpu_ms, 4), "host_us": round(host_us, 1)}


def host_top(fn, n: int = 20, top: int = 8) -> list[list]:
    """[operator, host µs per call, share of the host's time] of the top operators over n calls (CPU activity only)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    return [[e.key[:80], round(e.self_cpu_time_total / n, 1), round(e.self_cpu_time_total / total, 3)]
            for e in events[:top]]


def compile_facts(rec: compiling.CompileRecord, graphs: int) -> dict:
    """What the compile did that can make a CUDA-graph step pay host time."""
    return {"graphs": graphs, "cudagraph_skips": rec.cudagraph_skips, "recompiles": len(rec.recompiles),
            "graph_breaks": len(rec.graph_breaks), "fx_cache": rec.fx_cache_text,
            "cudagraph_log": [line[:300] for line in rec.log if "cudagraph" in line.lower()][:5]}


def paired(fns: list, warm: bool) -> list[float]:
    """The sweep's timing of fns[0] against fns[-1] (ratio first/last), optionally with a warm call per window."""
    window = measure.cuda_window()
    if warm:
        inner = window.run

        def run(fn, n):
            fn()
            return inner(fn, n)

        window = measure.Window(run, what="warm call, then CUDA events")
    timed = measure.time_interleaved(fns, measure.TimingPolicy(max_time_s=1.0), sync=torch.cuda.synchronize,
                                     window=window)
    r = ratios.paired_ratio(timed[0], timed[-1])
    return [round(r.value, 4), round(r.lo, 4), round(r.hi, 4), round(timed[0].median_ms, 4), round(timed[-1].median_ms, 4)]


def record(name: str, value) -> None:
    RESULTS[name] = value
    print(f"{name}: {json.dumps(value)}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--budget-s", type=float, default=200)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    start = time.monotonic()
    info = env.device_info("cuda")
    dtype = torch.bfloat16
    spec = models.get("llama-8b-shapes")
    model, inputs = spec.build("cuda", dtype, 1, 256)
    call = lambda m: (lambda: models.call(m, inputs))  # noqa: E731
    plain = compiling.CompileSettings(mode="reduce-overhead", tuning="off", fullgraph=True)
    experiments = []

    def aa():
        a = compiling.compiled(copy.deepcopy(model), plain, "a")
        b = compiling.compiled(copy.deepcopy(model), plain, "b")
        base = compiling.compiled(model, plain, "base")  # shares weights and KV-cache buffers with eager
        for name, fn in (("a", a), ("b", b), ("base_shared", base), ("eager", model)):
            record(f"noquant {name}", host_and_gpu(call(fn)))
        record("A/A a vs b (eager between), no warm call [ratio lo hi a_ms b_ms]",
               paired([call(a), call(model), call(b)], warm=False))
        record("A/A a vs b (eager between), warm call", paired([call(a), call(model), call(b)], warm=True))
        record("A/A base_shared vs a, no warm call", paired([call(base), call(model), call(a)], warm=False))
        record("A/A base_shared vs a, warm call", paired([call(base), call(model), call(a)], warm=True))

    def quantized(mode: str, inline: bool = True):
        def run():
            q = copy.deepcopy(model)
            modes_mod.quantize(q, modes_mod.get(mode), info, dtype)
            name = f"{mode} inline_inbuilt_nn_modules={inline}"
            with torch._dynamo.config.patch(inline_inbuilt_nn_modules=inline), compiling.watch() as rec:
                graphs0 = compiling.graphs_compiled()
                t0 = time.monotonic()
                f = compiling.compiled(q, plain, f"{mode}_{inline}")
                models.call(f, inputs)
                record(f"{name} compile_s", round(time.monotonic() - t0, 1))
                for _ in range(3):  # CUDA-graph trees record on the first calls: skips show by the third
                    models.call(f, inputs)
            record(f"{name} compile", compile_facts(rec, compiling.graphs_compiled() - graphs0))
            record(name, host_and_gpu(call(f)))
            record(f"{name} host_top [op, us/call, share]", host_top(call(f)))
        return run

    experiments += [("A/A", aa), ("int4 default", quantized("int4weightonly")),
                    ("int4 no inlining", quantized("int4weightonly", inline=False)),
                    ("int8 weight-only", quantized("int8weightonly")), ("float8 weight-only", quantized("float8weightonly"))]
    with torch.no_grad(), quiet_logs(), compiling.compiled_cell(plain):
        for name, fn in experiments:
            if time.monotonic() - start > args.budget_s:
                record(f"{name}", "skipped: budget spent")
                continue
            try:
                fn()
            except Exception:
                record(f"{name} failed", traceback.format_exc()[-1500:])
    record("wall_s", round(time.monotonic() - start, 1))
    if args.out:
        args.out.write_text(json.dumps(RESULTS, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
