"""The command line beyond one machine: `plan` (--sbatch), `run --plan/--index/--executor`, `status`, `merge`, `export`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import UserError

EXPORT_FORMATS = ("pytorch-v3",)


def add_job_flags(run: argparse.ArgumentParser) -> None:
    g = run.add_argument_group(
        "beyond one machine",
        "run a plan's units (see `plan`): one here with --index (else $SLURM_ARRAY_TASK_ID, else "
        "$JOB_COMPLETION_INDEX), or all of them as jobs with --executor; each unit writes "
        "OUT/<device name>/<model>-bs<b>/ and resumes there. --executor without --plan plans this run's "
        "flags into OUT/plan.jsonl first.")
    g.add_argument("--plan", default=None, metavar="PLAN", help="a plan file written by `python -m torchao_nb plan`")
    g.add_argument("--index", default=None, metavar="N", help="the unit of the plan to run (from 0)")
    g.add_argument("--executor", choices=("local", "slurm"), default=None,
                   help="run every unit as a submitit job: local (on this machine, --parallel at a time) or slurm "
                        "(one array job; needs the `slurm` extra and a SLURM login node)")
    add_cluster_flags(g)
    g.add_argument("--no-wait", action="store_true",
                   help="slurm: submit and return instead of following the jobs until they end")


def add_cluster_flags(g) -> None:
    """Where and with what each unit's job runs: `run --executor` and `plan --sbatch` take the same flags."""
    g.add_argument("--partition", default=None, help="slurm: the partition")
    g.add_argument("--gpus", type=int, default=None,
                   help="GPUs per unit (default: 1 on slurm; locally 1 when this machine has one, else 0)")
    g.add_argument("--cpus", type=int, default=None, help="slurm: CPUs per unit (--cpus-per-task)")
    g.add_argument("--mem-gb", type=int, default=None, help="slurm: memory per unit, GB")
    g.add_argument("--time-limit", type=int, default=60, metavar="MIN",
                   help="minutes per unit (default 60); past it the unit is requeued and resumes")
    g.add_argument("--parallel", type=int, default=None, metavar="N",
                   help="units at once (default: 1 locally, where units would disturb each other's timings; "
                        "no limit on slurm)")
    g.add_argument("--slurm-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="another #SBATCH option, e.g. account=abc or qos=high (repeat for more)")
    g.add_argument("--setup", action="append", default=[], metavar="LINE",
                   help="a shell line each job runs first, e.g. 'module load cuda' (repeat for more)")


def add_commands(sub, add_sweep_flags, sweep_options) -> None:
    """`plan` takes the sweep's flags (add_sweep_flags) and turns them into options (sweep_options), as `run` does."""
    pl = sub.add_parser("plan", help="write the work units of a sweep (model x batch size, with its modes) to a plan file")
    add_sweep_flags(pl)
    pl.add_argument("--out", required=True, help="the plan file to write, e.g. plan.jsonl")
    sb = pl.add_argument_group("an #SBATCH array script instead of submitit",
                               "--sbatch prints a SLURM array script running the plan's units (element i runs unit i "
                               "into ROOT, resuming its folder when requeued or submitted again): "
                               "plan ... --out plan.jsonl --sbatch --root ROOT > sweep.sbatch; sbatch sweep.sbatch")
    sb.add_argument("--sbatch", action="store_true", help="print the array script on stdout (the listing goes to stderr)")
    sb.add_argument("--root", default=None, help="with --sbatch: the folder every unit writes under (as `run --out`)")
    add_cluster_flags(sb)
    pl.set_defaults(func=lambda args: _plan(args, sweep_options(args)))

    st = sub.add_parser("status", help="say, per unit of a plan run as SLURM jobs, pending, running, done or failed")
    st.add_argument("root", help="the folder given to `run --plan ... --executor slurm --out`")
    st.add_argument("--plan", default=None, help="the plan (default: the one last submitted under ROOT)")
    st.set_defaults(func=_status)

    mg = sub.add_parser("merge", help="gather every unit folder under ROOT (from `run --plan`) into one results folder")
    mg.add_argument("root", help="the folder given to `run --plan ... --out`")
    mg.add_argument("--out", required=True, help="the results folder to write (outside ROOT)")
    mg.set_defaults(func=_merge)

    ex = sub.add_parser("export", help="write a results folder's measurements for another tool")
    ex.add_argument("results", help="a results folder (a sweep's, or a merged one)")
    ex.add_argument("--format", choices=EXPORT_FORMATS, default="pytorch-v3",
                    help="pytorch-v3: a JSON list of PyTorch OSS benchmark database records, as torchao's CI uploads")
    ex.add_argument("--out", required=True, help="the file to write, e.g. benchmark-results/torchao_nb.json")
    ex.set_defaults(func=_export)


def _plan_args(args, options: dict) -> dict:
    return dict(model=args.model, modes=args.modes or "all", batch_sizes=options.pop("batch_sizes", None), **options)


def _plan(args, options: dict) -> int:
    from . import jobs
    from . import plan as plan_mod

    if args.sbatch and not args.root:
        raise UserError("--sbatch needs --root ROOT: the folder the array's units write under (as `run --out`)")
    units = jobs.make_plan(**_plan_args(args, options))
    path = plan_mod.write_plan(units, args.out)
    listing = sys.stderr if args.sbatch else sys.stdout  # with --sbatch, stdout is the script
    for i, u in enumerate(units):
        print(f"  {i:3d}  {u.name:24s} {','.join(u.modes)}  (device {u.device})", file=listing)
    if args.sbatch:
        print(jobs.sbatch_script(path, args.root, _job_settings(args, "slurm"), len(units)), end="")
        print(f"plan: {len(units)} unit(s) in {path}; the script above runs them: sbatch it, then "
              f"python -m torchao_nb merge {args.root} --out MERGED", file=listing)
        return 0
    print(f"plan: {len(units)} unit(s) in {path}\n"
          f"run unit N here:    python -m torchao_nb run --plan {path} --index N --out ROOT\n"
          f"run every unit:     python -m torchao_nb run --plan {path} --executor local|slurm --out ROOT\n"
          f"then:               python -m torchao_nb merge ROOT --out MERGED")
    return 0


def _status(args) -> int:
    from . import jobs

    plan_path = args.plan or jobs.recorded_plan(args.root)
    sub = jobs.status(plan_path, args.root)
    for u in sub.units:
        print(sub.describe(u))
    print(f"{sub.progress()} (of {plan_path})")
    return 0


def _job_settings(args, cluster: str | None = None):
    from . import jobs

    pairs = []
    for item in args.slurm_arg:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--slurm-arg takes KEY=VALUE (an #SBATCH option without its dashes), got {item!r}")
        pairs.append((key.strip().lstrip("-"), value))
    return jobs.JobSettings(cluster=cluster or args.executor, partition=args.partition, gpus=args.gpus, cpus=args.cpus,
                            mem_gb=args.mem_gb, time_limit_min=args.time_limit, parallel=args.parallel,
                            slurm_args=tuple(pairs), setup=tuple(args.setup))


def run_plan(args, options: dict, print_results) -> int:
    """`run --plan` / `run --executor`: one unit here (its table shown by print_results), or every unit as jobs."""
    from . import jobs
    from . import plan as plan_mod

    given = [f for f, v in (("--model", args.model), ("--modes", args.modes)) if v] + sorted(options)
    if args.plan is not None and given:
        raise UserError(f"the plan fixes what each unit measures, so {', '.join(given)} can't change it; "
                        "write a new plan with `python -m torchao_nb plan`")
    if args.executor is None and args.no_wait:
        raise UserError("--no-wait is for --executor slurm")
    plan_path = args.plan
    if plan_path is None:  # --executor without a plan: this run's flags, planned into OUT/plan.jsonl
        units = jobs.make_plan(**_plan_args(args, options))
        plan_path = plan_mod.write_plan(units, Path(args.out) / "plan.jsonl")
        print(f"plan: {len(units)} unit(s) in {plan_path}")
    if args.executor is None:
        run = jobs.run_unit(plan_path, args.out, args.index, isolate=not args.in_process,
                            retry_errors=args.retry_errors, progress=not args.quiet)
        print(f"unit {run.index} of {plan_path}: {run.unit.name} on {run.results.environment.get('device_name')}")
        return print_results(run.results, run.folder)
    if args.no_wait and args.executor == "local":
        raise UserError("--no-wait is for slurm: local units start one after another while this command waits")
    indices = None if args.index is None else [args.index]
    sub = jobs.submit(plan_path, args.out, _job_settings(args), indices, isolate=not args.in_process,
                      retry_errors=args.retry_errors)
    followed = [u for u in sub.units if u.state == "running" and u not in sub.submitted]  # an earlier command's
    to_run = [u for u in sub.units if u.state in ("waiting", "running") and u not in followed]
    already = len([u for u in sub.units if u.state == "complete already"])
    at_once = f"{args.parallel or 1} at a time" if sub.local else "one array job"
    before = f"{len(followed)} still pending or running from before (followed, not submitted again); " if followed else ""
    print(f"{len(sub.units)} unit(s) of {plan_path}: {already} complete already; {before}{len(to_run)} to run as "
          f"{args.executor} jobs ({at_once}); job logs in {sub.folder}")
    if args.no_wait:
        print("submitted: " + (", ".join(f"unit {u.index} = job {u.job.job_id}" for u in sub.submitted) or "nothing"))
        print(f"see how they are doing: python -m torchao_nb status {args.out}\n"
              f"when they have ended:   python -m torchao_nb merge {args.out} --out MERGED")
        return 0
    try:
        units = sub.wait(lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        print("interrupted: finished cells are kept; the same command continues where the units stopped"
              + ("" if sub.local else " (the SLURM jobs go on: scancel them to stop)"), file=sys.stderr)
        return 130
    failed = [u for u in units if u.state == "failed"]
    for u in failed:
        print(f"unit {u.index} {u.unit.name}: {u.message}", file=sys.stderr)
    print(f"{sub.progress()}; merge them: python -m torchao_nb merge {args.out} --out MERGED"
          + (f"; {len(failed)} unit(s) failed: run the same command again to continue them" if failed else ""))
    return 1 if failed else 0


def _merge(args) -> int:
    from . import plan as plan_mod

    merged = plan_mod.merge(args.root, args.out)
    aside = f"; its earlier results files moved to {merged.set_aside}" if merged.set_aside else ""
    print(f"{merged.summary()}\nresults in {args.out}{aside} (report, compare and export read it; "
          "cells of different devices stay apart)")
    return 0


def _export(args) -> int:
    from . import export
    from .results import ResultSet

    path = Path(args.results)
    try:
        if not path.exists():
            raise FileNotFoundError(path)
        results = ResultSet.load(path)
    except (FileNotFoundError, ValueError):
        raise UserError(f"no results in {path}: expected a folder written by `run --out` or `merge --out`") from None
    if not len(results):
        raise UserError(f"{path} holds no rows: nothing to export.")
    if Path(args.out).is_dir():
        raise UserError(f"--out {args.out} is a folder; give the file to write, e.g. {Path(args.out) / 'v3.json'}.")
    out, written, omitted = export.export_pytorch_v3(results, args.out)
    print(f"{written} record(s) of {len(results) - len(omitted)} measured cell(s) written to {out}"
          + (f"; {len(omitted)} cell(s) without a measurement (skipped, error, wrong) left out" if omitted else ""))
    return 0 if written else 1
