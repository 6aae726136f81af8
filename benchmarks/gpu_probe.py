"""Why a GPU row is off: host cost per call against GPU time per call, and A/A pairs, on the 8B-shaped proxy.

    python benchmarks/gpu_probe.py [--budget-s 200] [--out FILE.json]

For compiled copies of llama-8b-shapes' decode step (CUDA graphs), prints per callable:
- gpu_ms: GPU time per call of 50 back-to-back calls (CUDA events);
- host_us: what enqueuing one call costs the host, measured while a long sleep kernel keeps the GPU busy
  (so no back-pressure hides it). host_us above gpu_ms*1000 means the step is host-bound: the GPU idles.
Then A/A pairs timed as the sweep times them (rounds, rotation, paired ratios), with and without an untimed
call at the start of each window, and int4 with dynamo's inlined modules off. Experiments run in order
until the budget is spent; each prints as it finishes.
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
    plain = compiling.CompileSettings(mode="reduce-overhead", torchao_tuning=False, fullgraph=True)
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

    def int4(inline: bool):
        def run():
            q = copy.deepcopy(model)
            modes_mod.quantize(q, modes_mod.get("int4weightonly"), info, dtype)
            with torch._dynamo.config.patch(inline_inbuilt_nn_modules=inline):
                t0 = time.monotonic()
                f = compiling.compiled(q, plain, f"int4_{inline}")
                models.call(f, inputs)
                record(f"int4 inline_inbuilt_nn_modules={inline} compile_s", round(time.monotonic() - t0, 1))
                record(f"int4 inline_inbuilt_nn_modules={inline}", host_and_gpu(call(f)))
        return run

    experiments += [("A/A", aa), ("int4 default", int4(True)), ("int4 no inlining", int4(False))]
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
