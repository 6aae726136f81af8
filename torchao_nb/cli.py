"""The headless command line: `python -m torchao_nb run | plan | merge | export | list-modes | list-models | report | notebook | repro | autoquant-cache`."""

from __future__ import annotations

import argparse
import sys
import warnings

from .errors import Notice, UserError


def _mode_settings(args) -> dict:
    """`--autoquant-floor 25` → {"autoquant": {"sqnr_floor_db": 25}}: each mode's settings fields that have a flag."""
    out: dict = {}
    for flag, (field, names) in _settings_flags().items():
        value = getattr(args, _flag_dest(flag))
        if value is not None:
            for mode in names:
                out.setdefault(mode, {})[field.name] = value
    return out


def _settings_flags() -> dict:
    """flag → (its settings field, the modes it sets); see modes.flagged_settings."""
    from . import autoquant  # noqa: F401  (registers the autoquant mode)
    from . import modes

    return modes.flagged_settings()


def _flag_dest(flag: str) -> str:
    return "setting__" + flag.lstrip("-").replace("-", "_")


def _sweep_options(args) -> dict:
    """The sweep options the flags give (those left out are not in the dict), mode settings included."""
    from . import config, measure

    options = {o.name: getattr(args, o.name) for o in config.OPTIONS + config.RENAMED
               if o.flag and getattr(args, o.name) is not None}
    if args.quick:
        options["policy"] = measure.FAST_POLICY
    return options | _mode_settings(args)


def _print_results(result, out) -> int:
    from . import columns, tables

    env = result.environment
    threads = f"{env['threads']} thread{'s' * (env['threads'] != 1)}"
    print(f"torch {env['torch']}, torchao {env['torchao']}, {env['device']} ({env['device_name']}), "
          f"{env['dtype']}, {threads}, compile={'on' if env['compile'] else 'off'}, "
          f"baseline settings={'on' if env['baseline'] else 'off'}, cells in {env['isolation']}")
    print(tables.text(result))
    print(f"\n{columns.timing_note(result)}\nresults in {out}/results.csv and results.json")
    return _run_status(result)


def _run_status(result) -> int:
    """0 when at least one cell was measured; 1 (with one line saying why) when none was: every cell failed, gave
    a wrong output or could not run here. A script that runs a sweep must not take "nothing measured" for success."""
    statuses = {r.status for r in result}
    if "ok" in statuses:
        return 0
    if not statuses:
        why = "the sweep stopped before any cell finished"
    elif statuses == {"skipped"}:
        why = "every cell was skipped: none of these modes can run here (see the note column)"
    else:
        why = "every cell failed, gave a wrong output or was skipped (see the status and note columns)"
    print(f"error: no cell was measured: {why}", file=sys.stderr)
    return 1


def _run(args) -> int:
    from .engine import sweep

    if args.plan is not None or args.executor is not None:
        from .cli_jobs import run_plan

        return run_plan(args, _sweep_options(args), _print_results)
    if args.index is not None:
        raise UserError("--index picks a unit of a plan: give --plan PLAN too (write one with `python -m torchao_nb plan`)")
    result = sweep(model=args.model, modes=args.modes or "all", out=args.out, resume=args.resume,
                   retry_errors=args.retry_errors, progress=not args.quiet, isolate=not args.in_process,
                   **_sweep_options(args))
    return _print_results(result, args.out)


def _list_modes(args) -> int:
    from . import autoquant  # noqa: F401  (registers the autoquant mode)
    from . import env, modes

    device = env.resolve_device(args.device)
    info = env.device_info(device)
    dtype = env.resolve_dtype(args.dtype, info)
    here = f"{device} ({info.name}), {env.dtype_name(dtype)}"
    print(f"every mode, where it can run, and whether it runs on {here}:" if args.all else f"modes on {here}:")
    width = max(map(len, modes.MODES))
    for name, mode in modes.MODES.items():
        reason = mode.unsupported_reason(info, dtype)
        state = "runs here" if reason is None else f"can't run here: {reason}"
        print(f"  {name.ljust(width)}  {mode.description}")
        if args.all:
            print(f"  {'':{width}}  runs on: {mode.where.text()}")
        print(f"  {'':{width}}  -> {state}")
    return 0


def _list_models(args) -> int:
    from . import models

    rows = models.listing()
    width = max(len(r["name"]) for r in rows)
    print(f"  {'name'.ljust(width)}  {'family':8s} {'params':>8s}  {'timed step':10s} description")
    for r in rows:
        size = "?" if r["params"] is None else f"{r['params'] / 1e6:.1f}M"
        default = " (default)" if r["default"] else ""
        print(f"  {r['name'].ljust(width)}  {r['family']:8s} {size:>8s}  {r['step']:10s} {r['description']}{default}")
    return 0


def _notebook(args) -> int:
    from nbclient.exceptions import CellExecutionError

    from . import notebooks

    params = dict(notebooks.parse_param(p) for p in args.param)
    batch_sizes = None if args.batch_sizes is None else args.batch_sizes.split(",")
    flags = {"model": args.model, "modes": args.modes, "device": args.device, "dtype": args.dtype,
             "batch_sizes": batch_sizes, "compile": args.compile, "fast": args.fast or None}
    params.update({k: v for k, v in flags.items() if v is not None})
    nb = notebooks.find(args.name)
    import nbformat

    if "out" in notebooks.parameter_names(nbformat.read(nb, as_version=4)):
        params.setdefault("out", str(args.out))  # the notebook's results go beside it
    try:
        ipynb, html = notebooks.execute(nb, args.out, params, timeout_s=args.timeout)
    except CellExecutionError as e:  # its text is the cell's whole coloured traceback: that stays in the notebook
        what = f"{e.ename}: {str(e.evalue).strip().splitlines()[0] if str(e.evalue).strip() else ''}".rstrip(": ")
        print(f"error: a cell of {nb.name} failed ({what}); the notebook as far as it ran, with the traceback, "
              f"is in {args.out}", file=sys.stderr)
        return 1
    print(f"executed notebook: {ipynb}\nHTML export: {html}")
    return 0


def _report(args) -> int:
    from .report import build

    rep = build(args.results, args.out, labels=args.label)
    print(f"report: {rep.html} (self-contained, opens offline); figures: {', '.join(p.name for p in rep.figures)}")
    return 0


def _repro(args) -> int:
    """Re-run every repro script of a results folder: which still reproduce (with --issue: a bug report for each)."""
    from . import repro

    still = 0
    for path in repro.scripts_in(args.results):
        tried = repro.run_script(path, args.timeout)
        said = repro.verdict(path, tried)
        still += said != "fixed"
        if args.issue:
            print(repro.issue_text(path, tried) + "\n---\n")
        else:
            print(f"{path.name}: {said} ({tried.exit_text()})")
    return 1 if still else 0


def _autoquant_cache(args) -> int:
    from .autoquant import cache as autoquant

    folder = autoquant.cache_root(args.cache_dir) / "autoquant"
    if args.action == "clear":
        print(f"removed {autoquant.clear_cache(args.cache_dir)} stored timings from {folder}")
    else:
        print(f"{autoquant.cache_entries(args.cache_dir)} stored timings in {folder}")
    return 0


def _add_sweep_flags(p: argparse.ArgumentParser) -> None:
    """What a sweep measures: `run` and `plan` take the same flags, from the options defined in config."""
    from . import config

    p.add_argument("--model", default=None, help="registry model name(s), comma-separated (see list-models)")
    p.add_argument("--modes", default=None, help="comma-separated modes, or 'all' (the default; see list-modes)")
    for o in config.OPTIONS:
        if o.flag is None:
            continue
        if o.type is bool:
            p.add_argument(o.flag, dest=o.name, action=argparse.BooleanOptionalAction, default=None,
                           help=f"{o.help} (default {'on' if o.default else 'off'})")
        else:
            default = "" if o.default is None else f" (default {o.default})"
            p.add_argument(o.flag, dest=o.name, type=o.type, default=None, help=o.help + default)
    for old in config.RENAMED:  # still taken, not shown: config.split_options reads them as today's option
        p.add_argument(old.flag, dest=old.name, action=argparse.BooleanOptionalAction, default=None,
                       help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="a few samples per cell: for smoke tests, not for numbers")
    for flag, (field, names) in _settings_flags().items():
        p.add_argument(flag, dest=_flag_dest(flag), type=field.metadata.get("type", float), default=None,
                       metavar=field.metadata.get("metavar"), help=f"{' and '.join(names)}: {field.metadata['help']}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m torchao_nb", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="sweep models x modes x batch sizes and write results files; or run a plan's units")
    _add_sweep_flags(run)
    run.add_argument("--in-process", action="store_true",
                     help="run the cells in this process instead of a supervised worker (for debugging: a crash ends the run)")
    run.add_argument("--out", required=True, help="results folder (with --plan: the root that holds every unit's folder)")
    run.add_argument("--resume", action="store_true", help="re-use the cells already in OUT/rows.jsonl")
    run.add_argument("--retry-errors", action="store_true", help="with --resume or --plan: measure cells that failed again")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    from .cli_jobs import add_job_flags

    add_job_flags(run)
    run.set_defaults(func=_run)

    lm = sub.add_parser("list-modes", help="every mode and whether it runs on this machine (--all: and where it can run)")
    lm.add_argument("--device", default="auto")
    lm.add_argument("--dtype", default=None)
    lm.add_argument("--all", action="store_true",
                    help="also say where each mode can run on any machine: CPU, CUDA compute capability, dtypes, packages")
    lm.set_defaults(func=_list_modes)

    sub.add_parser("list-models", help="the built-in models").set_defaults(func=_list_models)

    nb = sub.add_parser("notebook", help="execute a bundled notebook (e.g. 03_report) and write it with an HTML export")
    nb.add_argument("name", help="a notebook in notebooks/ (01_quickstart, 02_walkthrough, 03_report) or a path to an .ipynb")
    nb.add_argument("--out", required=True, help="folder for the executed notebook, its HTML and its results")
    nb.add_argument("--model", default=None, help="sets the notebook's `model` parameter")
    nb.add_argument("--modes", default=None, help="sets `modes`, e.g. noquant,int8dynamic or all")
    nb.add_argument("--device", default=None)
    nb.add_argument("--dtype", default=None)
    nb.add_argument("--batch-sizes", default=None, help="sets `batch_sizes`, e.g. 1,8")
    nb.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="sets `compile`")
    nb.add_argument("--fast", action="store_true", help="short timing (for smoke runs; numbers are rougher)")
    nb.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE", help="any other parameter")
    nb.add_argument("--timeout", type=int, default=3600, help="seconds allowed per cell")
    nb.set_defaults(func=_notebook)

    rep = sub.add_parser("report", help="one self-contained HTML file (+ PNG figures beside it) from results folders")
    rep.add_argument("results", nargs="+", help="results folder(s) written by `run --out`; several are compared")
    rep.add_argument("--out", default="report.html", help="the HTML file to write (default: report.html)")
    rep.add_argument("--label", action="append", help="a name for each results folder, in order (default: folder names)")
    rep.set_defaults(func=_report)
    rp = sub.add_parser("repro", help="re-run the repro scripts a sweep wrote for its wrong or crashed cells (OUT/repro): "
                                      "which still reproduce; exit 1 when any still fails")
    rp.add_argument("results", help="a results folder written by `run --out`")
    rp.add_argument("--issue", action="store_true",
                    help="print a Markdown bug-report body per script: title, the script, expected vs actual, collect_env")
    rp.add_argument("--timeout", type=float, default=600.0, help="seconds each script may run (default 600)")
    rp.set_defaults(func=_repro)
    aq = sub.add_parser("autoquant-cache", help="show or clear autoquant's stored per-layer timings")
    aq.add_argument("action", choices=["info", "clear"])
    aq.add_argument("--cache-dir", default=None, help="default: $TORCHAO_NB_CACHE_DIR or ~/.cache/torchao_nb")
    aq.set_defaults(func=_autoquant_cache)
    from .cli_jobs import add_commands

    add_commands(sub, _add_sweep_flags, _sweep_options)
    return p


def _show_notice(message, category, filename, lineno, file=None, line=None) -> None:
    """torchao_nb's notices as one line each; other warnings as Python shows them."""
    if issubclass(category, Notice):
        print(f"note: {message}", file=sys.stderr)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


_python_showwarning = warnings.showwarning


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # (with --executor the units run in jobs, not here)
    if argv[:1] == ["run"] and not {"--in-process", "-h", "--help", "--executor"} & {a.split("=")[0] for a in argv}:
        from . import executors

        executors.prestart()  # the worker imports torch and torchao while this process does the same
    args = parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("once", Notice)  # each notice once, however often it is raised
        warnings.showwarning = _show_notice
        try:
            return args.func(args)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted: finished rows are kept; rerun with --resume to continue", file=sys.stderr)
            return 130
        except OSError as e:  # a full disk, a folder taken away: one line, not three chained tracebacks
            where = f" {e.filename}" if e.filename else ""
            print(f"error: cannot write{where}: {e.strerror or e}. Rows already finished are kept in rows.jsonl; "
                  "free space or fix the folder, then rerun with --resume.", file=sys.stderr)
            return 1
