"""Small experiments the walkthrough notebook narrates: each mode on one Linear, and the usual timing pitfalls."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from . import autoquant  # noqa: F401  (registers the autoquant mode)
from . import baseline as baseline_mod
from . import compiling, measure, models, tables
from . import env as envmod
from . import modes as modes_mod
from ._torchao import quiet_logs
from .errors import error_text
from .results import sqnr_or_inf


def baseline_table():
    """The seed's compiler settings: what each is now → what the baseline sets, whether it applies, why."""
    import pandas as pd

    return pd.DataFrame(tables.baseline_records(baseline_mod.describe_dicts()))


def effective_weight(model: nn.Module, in_features: int, like: torch.Tensor) -> torch.Tensor:
    """The weights a bias-free Linear really applies: its output for the identity matrix, transposed.

    Works for every torchao weight format, packed ones included, where `dequantize()` may be missing.
    """
    eye = torch.eye(in_features, device=like.device, dtype=like.dtype)
    return model(eye).float().T


@dataclass
class LinearStudy:
    """One Linear quantized by each mode: a table, and a slice of weights to draw before and after."""

    table: object  # pandas DataFrame, one row per mode
    original: torch.Tensor  # the first weights of row 0, float32
    after: dict[str, torch.Tensor] = field(default_factory=dict)  # mode → the same weights, dequantized

    def figure(self):
        """The first weights of one output row as each mode stores them (left), and each mode's error (right)."""
        from matplotlib.figure import Figure

        from .drawing import mode_color

        fig = Figure(figsize=(12, 3.8), layout="constrained")
        left, right = fig.subplots(1, 2, width_ratios=(3, 2))
        x = range(len(self.original))
        left.bar(x, self.original.numpy(), color="#ccc", label="original (float)")
        quantized = {m: w for m, w in self.after.items() if m != "noquant"}
        for mode, w in quantized.items():
            left.scatter(x, w.numpy(), marker="_", s=60, color=mode_color(mode), label=mode)
            right.plot(x, (w - self.original).numpy(), marker=".", lw=0.8, color=mode_color(mode), label=mode)
        left.set(xlabel="input feature (first weights of output row 0)", ylabel="weight value",
                 title="Weights as each mode stores them")
        right.axhline(0, color="black", lw=0.6)
        right.set(xlabel="input feature", ylabel="stored − original", title="Rounding error per weight")
        left.legend(fontsize=8, ncols=2)
        return fig


def one_linear(in_features: int = 1024, out_features: int = 1024, batch: int = 8, device: str = "auto",
               dtype=None, modes=None, show: int = 48) -> LinearStudy:
    """Quantize a fresh copy of one Linear with each mode that runs here; compare weights, size and output."""
    import pandas as pd

    dev = envmod.resolve_device(device)
    info = envmod.device_info(dev)
    dt = envmod.resolve_dtype(dtype, info)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        layer = nn.Linear(in_features, out_features, bias=False).to(dev, dt).eval()
        nn.init.normal_(layer.weight, std=in_features ** -0.5)
        x = torch.randn(batch, in_features, device=dev, dtype=dt)
    original = layer.weight.detach().float()
    with torch.no_grad():
        ref = layer(x)
    lines, after = [], {}
    available = modes_mod.availability(info, dt)
    for mode in modes_mod.resolve_modes(modes):
        spec = modes_mod.get(mode)
        if available[mode] is not None:
            lines.append({"mode": mode, "status": "skipped", "note": available[mode]})
            continue
        model = nn.Sequential(copy.deepcopy(layer))  # quantize_ replaces children: give the Linear a parent
        try:
            with torch.no_grad(), quiet_logs():
                report = modes_mod.quantize(model, spec, info, dt, (x,))
                out = model(x)
                w = effective_weight(model, in_features, x)
        except Exception as e:  # one mode failing is a finding to show, not a reason to stop
            lines.append({"mode": mode, "status": "error", "note": error_text(e, 200)})
            continue
        acc = measure.accuracy(ref, out)
        werr = measure.accuracy(original, w)
        after[mode] = w[0, :show].cpu()
        lines.append({
            "mode": mode, "status": "ok", "weight type": type(model[0].weight).__name__,
            "weight bytes": measure.weight_bytes(model), "size vs original": measure.weight_bytes(model) / measure.weight_bytes(layer),
            # SQNR None means bit-identical: infinite
            "weight SQNR dB": sqnr_or_inf(werr.sqnr_db), "output SQNR dB": sqnr_or_inf(acc.sqnr_db),
            "output max abs err": acc.max_abs_err,
            "quantized": report.layers_quantized == 1,
            "note": "; ".join(report.skipped_layers.values()),
        })
    return LinearStudy(pd.DataFrame(lines), original[0, :show].cpu(), after)


# ---- timing pitfalls -----------------------------------------------------------------------

PITFALL_COLUMNS = ("pitfall", "naive", "careful", "why")


def _each_call_ms(fn, n: int, sync) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        sync()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def _device_sync(dev: str, call, steady: measure.Measurement) -> tuple[str, str, str, str]:
    if dev != "cuda":
        return ("device sync", "n/a on the CPU", "n/a on the CPU",
                "CPU calls finish before they return; on CUDA the clock must wait for the GPU")
    t0 = time.perf_counter()
    call()
    unsynced = (time.perf_counter() - t0) * 1e3
    return ("device sync", f"no sync {unsynced:.3f} ms", f"synchronised {steady.median_ms:.3f} ms",
            "CUDA calls return before the GPU finishes; read the clock after torch.cuda.synchronize()")


def _compile_time(compile: bool, module, inputs, steady, policy, sync) -> tuple[str, str, str, str]:
    if not compile:
        return ("compile time", "compile off", "compile off",
                "set compile=True to see compile + first call against the steady state")
    settings = compiling.CompileSettings()  # the sweep's defaults
    with compiling.compiled_cell(settings):
        fn = compiling.compiled(copy.deepcopy(module), settings)
        _, compile_s = measure.time_once(lambda: models.call(fn, inputs), sync=sync)
        steady_compiled = measure.time_calls(lambda: models.call(fn, inputs), policy, sync=sync)
    return ("compile time", f"first compiled call {compile_s:.1f} s",
            f"compiled median {steady_compiled.median_ms:.2f} ms (eager {steady.median_ms:.2f} ms)",
            "torch.compile works on the first call; time it apart and keep it out of the median")


def timing_pitfalls(model: str = models.DEFAULT_MODEL, batch_sizes=(1, 8), device: str = "auto", dtype=None,
                    compile: bool = True, policy: measure.TimingPolicy | None = None):
    """Naive vs careful measurements of the same model: warm-up, device sync, compile time, batch size."""
    import pandas as pd

    policy = policy or measure.TimingPolicy()
    dev = envmod.resolve_device(device)
    dt = envmod.resolve_dtype(dtype, envmod.device_info(dev))
    spec = models.get(model)
    sync = measure.sync_for(dev)
    with torch.no_grad(), quiet_logs():
        module, inputs = spec.build(dev, dt, batch_sizes[0], spec.seq_len)
        call = lambda: models.call(module, inputs)  # noqa: E731
        first = _each_call_ms(call, 3, sync)
        steady = measure.time_calls(call, policy, sync=sync)
        lines = [("warm-up", f"first call {first[0]:.2f} ms",
                  f"median after warm-up {steady.median_ms:.2f} ms (IQR {steady.iqr_ms:.2f})",
                  "the first calls pay for allocation, caches and lazy initialisation"),
                 _device_sync(dev, call, steady), _compile_time(compile, module, inputs, steady, policy, sync)]
        for b in batch_sizes:
            module_b, inputs_b = spec.build(dev, dt, b, spec.seq_len)
            m = measure.time_calls(lambda: models.call(module_b, inputs_b), policy, sync=sync)
            lines.append((f"batch size {b}", f"{m.median_ms:.2f} ms per call", f"{m.median_ms / b:.3f} ms per sample",
                          "bigger batches cost more per call but less per sample: compare at the batch you will serve"))
    return pd.DataFrame(lines, columns=list(PITFALL_COLUMNS))
