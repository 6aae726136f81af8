"""Checks the demo's promises: runs `python -m torchao_nb run --modes all --device cpu` and tests the bounds.

    python benchmarks/demo_check.py [OUT_DIR]

Pass: exit 0 within 3 minutes; every mode has a row (ok, or skipped with a reason); noquant's
speedup vs the compiled baseline (the A/A control) within 0.85–1.15; int8dynamic SQNR >= 20 dB;
the results files load back equal. Prints the table and one line per check.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time

from torchao_nb import autoquant  # noqa: F401  (registers the autoquant mode)
from torchao_nb import modes as modes_mod
from torchao_nb.results import ResultSet


def main() -> int:
    out = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="demo-")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "torchao_nb", "run", "--modes", "all", "--device", "cpu", "--quiet", "--out", out],
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    print(proc.stdout)
    rs = ResultSet.load(f"{out}/results.json")
    rows = {r.mode: r for r in rs}
    checks = {
        f"exit 0 (got {proc.returncode})": proc.returncode == 0,
        f"under 3 minutes ({wall:.0f} s)": wall < 180,
        "every mode has a row, ok or skipped with a reason": set(rows) == set(modes_mod.MODES) and all(
            r.status == "ok" or (r.status == "skipped" and r.reason) for r in rows.values()),
        f"noquant A/A speedup in 0.85-1.15 ({rows['noquant'].speedup:.3f})": 0.85 <= (rows["noquant"].speedup or 0) <= 1.15,
        f"int8dynamic SQNR >= 20 dB ({rows['int8dynamic'].sqnr_db:.1f})": (rows["int8dynamic"].sqnr_db or 0) >= 20,
        "results.csv and results.json load back equal": ResultSet.load(f"{out}/results.csv") == rs,
    }
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
