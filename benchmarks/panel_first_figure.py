"""Click Run → first figure in a real browser: JupyterLab + Debian chromium, the quickstart panel with its defaults.

    python benchmarks/panel_first_figure.py [--model mlp] [--no-compile] [--threads N] [--screenshot docs/panel.png]

Opens notebooks/01_quickstart in JupyterLab, runs it, leaves every panel setting at its default
(default model, every runnable mode, compile on, baseline on, batch 1) unless told otherwise,
clicks Run and reports the seconds until the panel's figure has been decoded in the page, then
waits for the whole run and (optionally) saves a screenshot of the panel.
The inductor cache is cleared first unless --warm-cache, so the number includes cold compiles.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.browser.lab import chromium, jupyterlab, open_and_run_all  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="default: the panel's default model")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--threads", type=int, default=None, help="type this into the panel's CPU threads box")
    ap.add_argument("--warm-cache", action="store_true", help="keep inductor's on-disk cache (default: start cold)")
    ap.add_argument("--screenshot", default=None, help="save a PNG of the panel after the run")
    ap.add_argument("--stop-after-first", action="store_true", help="press Stop once the first figure is shown")
    ap.add_argument("--timeout", type=int, default=1200, help="seconds allowed for the whole run")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="panel-bench-"))
    if not args.warm_cache:
        # A private, empty inductor cache for the kernel the server starts: cold compiles, as for a new user.
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(work / "inductor-cache")
    with jupyterlab(work, ["01_quickstart"]) as (url, token), chromium() as browser:
        page = browser.new_page(viewport={"width": 1300, "height": 2600})
        panel = open_and_run_all(page, url, token, "01_quickstart")
        if args.model:
            picker = panel.locator("select").first
            picker.select_option(label=picker.locator("option", has_text=args.model).first.inner_text())
        if args.threads:
            box = panel.locator(".torchao-nb-threads input")
            box.fill(str(args.threads))
            box.press("Enter")
        if not args.compile:
            panel.locator(".torchao-nb-compile input[type=checkbox]").uncheck()
        modes = [b.inner_text().strip() for b in panel.locator(".torchao-nb-modes button.mod-active").all()]
        figure = panel.locator(".torchao-nb-figure").element_handle()
        status = panel.locator(".torchao-nb-status").element_handle()

        t0 = time.perf_counter()
        panel.locator(".torchao-nb-run").click()
        page.wait_for_function("el => el.complete && el.naturalWidth > 300", arg=figure, timeout=args.timeout * 1000)
        first = time.perf_counter() - t0
        print(f"click Run -> first figure: {first:.1f} s  (modes selected: {', '.join(modes)}; "
              f"compile {'on' if args.compile else 'off'}; cache {'warm' if args.warm_cache else 'cold'})", flush=True)
        if args.stop_after_first:
            panel.locator(".torchao-nb-stop").click()
        page.wait_for_function("el => /^(done|stopped|failed)/.test(el.textContent)", arg=status, timeout=args.timeout * 1000)
        total = time.perf_counter() - t0
        print(f"click Run -> run finished: {total:.1f} s; panel says: {panel.locator('.torchao-nb-status').inner_text()}")
        print(panel.locator(".torchao-nb-table").inner_text())
        errors = panel.locator(".torchao-nb-errors").inner_text().strip()
        if errors:
            print(f"errors shown in the panel: {errors}")
        if args.screenshot:
            panel.screenshot(path=args.screenshot)
            print(f"screenshot: {args.screenshot}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
