"""Hand-made result sets with ok, skipped and error rows, shared by the plot and report tests."""

import dataclasses
import json

from torchao_nb import ResultSet, Row

SKIP_REASON = "float8 dynamic activation needs a CUDA GPU with compute capability >= 8.9"
ERROR_REASON = "RuntimeError: int4 kernel exploded"

# (mode, batch, median_ms, iqr_ms, speedup, vs eager, sqnr_db, cosine, weight MB)
OK = [
    ("noquant", 1, 10.0, 0.4, 1.00, 1.50, None, 1.0, 40.0),  # identical output: SQNR left empty
    ("int8dynamic", 1, 8.0, 0.3, 1.25, 1.875, 30.0, 0.999, 10.0),
    ("int8weightonly", 1, 5.0, 0.2, 2.00, 3.00, 38.0, 0.9995, 10.0),
    ("noquant", 4, 20.0, 0.8, 1.00, 1.40, None, 1.0, 40.0),
    ("int8dynamic", 4, 10.0, 0.5, 2.00, 2.80, 29.0, 0.998, 10.0),
    ("int8weightonly", 4, 16.0, 1.0, 1.25, 1.75, 37.0, 0.9994, 10.0),
]


def row(mode, batch, status="ok", model="mlp", device="cpu", **kw):
    return Row(model=model, mode=mode, batch_size=batch, device=device, dtype="bfloat16", compile=True, baseline=True,
               status=status, **kw)


def ok_row(mode, batch, ms, iqr, speedup, vs_eager, sqnr, cosine, weight_mb, **kw):
    return row(mode, batch, median_ms=ms, iqr_ms=iqr, speedup=speedup, speedup_vs_eager=vs_eager, sqnr_db=sqnr,
               cosine=cosine, weight_bytes=int(weight_mb * 1e6), peak_mem_bytes=int(weight_mb * 2e6),
               baseline_ms=ms * speedup, eager_ms=ms * vs_eager, layers_quantized=2, layers_total=2,
               roofline_pct=roofline_pct(weight_mb, ms), **kw)


def roofline_pct(weight_mb, ms):
    """A made-up but distinct % of the copy bandwidth per cell."""
    return 100 * weight_mb / ms / 5


def result_set(**env) -> ResultSet:
    rows = [ok_row(*spec) for spec in OK]
    rows.insert(3, row("float8dynamic", 1, "skipped", reason=SKIP_REASON))
    rows.insert(4, row("int4weightonly", 1, "error", reason=ERROR_REASON))
    rows.append(row("float8dynamic", 4, "skipped", reason=SKIP_REASON))
    rows.append(row("int4weightonly", 4, "error", reason=ERROR_REASON))
    environment = {"torch": "2.13.0+cpu", "torchao": "0.18.0", "device": "cpu", "device_name": "Test CPU", "threads": 2,
                   "dtype": "bfloat16", "python": "3.11.7"}
    environment.update(env)
    return ResultSet(tuple(rows), environment)


def other_run() -> ResultSet:
    """A second machine: int8dynamic twice as fast, int4 ran there, float8dynamic missing altogether."""
    rows = []
    for r in result_set().rows:
        if r.mode == "float8dynamic":
            continue
        if r.mode == "int4weightonly":
            r = ok_row("int4weightonly", r.batch_size, 4.0, 0.1, 2.5, 3.0, 20.0, 0.99, 5.0)
        elif r.mode == "int8dynamic":
            r = ok_row("int8dynamic", r.batch_size, r.median_ms / 2, r.iqr_ms, r.speedup * 2, r.speedup_vs_eager * 2,
                       r.sqnr_db, r.cosine, 10.0)
        rows.append(dataclasses.replace(r, device="cuda"))
    return ResultSet(tuple(rows), {"device": "cuda", "device_name": "Other GPU", "torch": "2.13.0", "torchao": "0.18.0"})


def llm_run() -> ResultSet:
    """A causal LM's rows with generated texts (one of them HTML-like, which must stay text)."""
    texts = {"prompts": ["The capital of France is", "1 < 2"], "unquantized": [" Paris.", " <b>true</b>"],
             "unquantized_how": "compiled", "new_tokens": 8}
    rows = [ok_row(mode, 1, 10.0, 0.1, 1.0, 1.0, None, 1.0, 10.0, model="smollm2-135m", perplexity=20.0 + i,
                   agreement=1.0 - i / 4, extra=json.dumps({"generations": {**texts, "quantized": [f" {mode}!", "x"]}}))
            for i, mode in enumerate(("noquant", "int4weightonly"))]
    return ResultSet(tuple(rows), {"device": "cpu"})
