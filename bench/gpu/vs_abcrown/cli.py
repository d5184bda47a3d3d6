"""dtensor-verify and alpha,beta-CROWN side by side on the same VNN-COMP instances.

    bench/gpu/bench_vs_abcrown.py BENCH_DIR --abcrown DIR --auto-lirpa DIR --out OUT
        [--filter SUBSTRING ...] [--limit N] [--instances CSV] [--timeout-scale F]
        [--device cpu|cuda] [--expected CSV] [--onnx2pytorch DIR] [--abcrown-config YAML]
        [--threads N] [--tools ours,abcrown] [--deadline SECONDS] [--work DIR] [--parts K]
        [--ours-csv CSV] [--abcrown-csv CSV]

Both tools get the same instances (BENCH_DIR/instances.csv, or --instances, then --filter and
--limit), the same per-instance time limits (the csv's timeout x --timeout-scale) and the same
device, and each runs ALL of them in one process:

* ours: `python -m dtensor_verify benchmark BENCH_DIR --instances SEL --csv OUT/ours.csv
  --timeout-scale F [--device D]` (alpha-CROWN, then beta-CROWN branch and bound);
* alpha,beta-CROWN: its csv batch mode, `abcrown.py --config C --root_path R --csv_name
  instances.csv --timeout_scale F --device D`, on gunzipped copies of the instance files (it reads
  neither .onnx.gz paths named without .gz nor gzipped VNN-LIB). If it crashes or hangs on an
  instance, that instance is recorded as `error` / `timeout` and it is restarted (--start) on
  the next one.

--parts K runs alpha,beta-CROWN as K processes side by side (sharing the device), the instances
dealt round-robin, as bench/gpu/input_bab_gpu.sh deals ours. --ours-csv / --abcrown-csv take a
tool's verdicts from an earlier run instead of running it (both: a comparison only, e.g. here,
after two device calls); every run of abcrown also writes OUT/abcrown.csv (onnx, vnnlib,
verdict, seconds, status, message).

alpha,beta-CROWN's configs are its released VNN-COMP 2022 ones (configs.ABCROWN_CONFIGS), turned
into plain branch and bound by `plain_bab` (no MIP, no Gurobi / CPLEX cuts); every change is
listed in the table's header. --abcrown-config YAML uses that file instead (same changes).

Writes OUT/results.csv (one row per instance: verdict and seconds of each tool), OUT/table.md
(header with device, versions, commits and exact commands; counts per model; agreement with
--expected; contradictions; per-instance table), OUT/ours.csv, OUT/ours.log, OUT/abcrown.log,
and prints the summary. A sat-vs-unsat clash between the tools, or of either tool with an
expected verdict, is printed as CONTRADICTION and makes the exit status 1. Usage errors: one
line `bench_vs_abcrown: error: ...`, exit status 2.

Counting: abcrown's `unsafe-*` is sat, `safe*` unsat, `unknown` is timeout when it used its time
(else unknown). As in VNN-COMP, a sat / unsat reached more than LATE_SLACK past its limit counts
as timeout, for both tools (the raw verdict stays in results.csv).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import fields
from pathlib import Path

from dtensor_verify.benchmark import read_expected
from dtensor_verify.cli_common import CliError

from .facts import gather_facts
from .instances import select_instances
from .records import (EXIT_CONTRADICTION, EXIT_ERROR, EXIT_OK, HANG_FACTOR, OURS_SHARE, PROG, ROOT, TOOLS,
                      Instance, Options, ToolRun, UsageError)
from .report import render
from .run_abcrown import run_abcrown
from .run_ours import ours_supports_device, run_ours
from .tool_csv import read_tool_csv, write_results_csv, write_tool_csv
from .verdicts import merge

_PATHS = ("abcrown", "auto_lirpa", "onnx2pytorch", "abcrown_config", "expected", "instances",
          "ours_csv", "abcrown_csv")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("bench", type=Path, metavar="BENCH_DIR", help="benchmark folder with instances.csv")
    p.add_argument("--abcrown", type=Path, default=None,
                   help="alpha-beta-CROWN checkout (needed unless --abcrown-csv)")
    p.add_argument("--auto-lirpa", type=Path, default=None,
                   help="auto_LiRPA checkout, imported from source (needed unless --abcrown-csv)")
    p.add_argument("--onnx2pytorch", type=Path, default=None,
                   help="onnx2pytorch checkout abcrown needs, if it is not installed")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default OUT/work)")
    p.add_argument("--instances", type=Path, default=None, help="instances file (default BENCH_DIR/instances.csv)")
    p.add_argument("--filter", action="append", default=None, metavar="SUBSTRING",
                   help="instances whose paths contain it (repeat: any of them)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="first N selected instances")
    p.add_argument("--timeout-scale", type=float, default=1.0, metavar="F")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--expected", type=Path, default=None, help="known verdicts (onnx,vnnlib,verdict)")
    p.add_argument("--abcrown-config", type=Path, default=None,
                   help="abcrown YAML for all instances instead of the released one per benchmark")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for both tools (OMP_NUM_THREADS)")
    p.add_argument("--tools", default="ours,abcrown", help="ours,abcrown | ours | abcrown")
    p.add_argument("--deadline", type=float, default=None, metavar="SECONDS",
                   help=f"stop by then: ours is killed after {OURS_SHARE:.0%}% of it, abcrown at it")
    p.add_argument("--hang-grace", type=float, default=120.0, metavar="SECONDS",
                   help=f"abcrown is killed on an instance after {HANG_FACTOR:g} x its limit + this")
    p.add_argument("--parts", type=int, default=1, metavar="K",
                   help="abcrown: K processes side by side, the instances dealt round-robin")
    p.add_argument("--ours-csv", type=Path, default=None, metavar="CSV",
                   help="ours: verdicts of an earlier run (`benchmark --csv`) instead of running it")
    p.add_argument("--abcrown-csv", type=Path, default=None, metavar="CSV",
                   help="abcrown: verdicts of an earlier run (this script's abcrown.csv) instead of running it")
    p.add_argument("--python", default=sys.executable, help="interpreter for both tools")
    p.add_argument("--ours-commit", default=None, help="commit to report for this repository")
    return p


def to_options(args: argparse.Namespace) -> Options:
    """The parsed command line as Options: paths resolved, --tools split, then checked."""
    values = {f.name: getattr(args, f.name) for f in fields(Options) if f.name != "tools"}
    values["bench"] = args.bench.resolve()
    for name in _PATHS:
        if values[name] is not None:
            values[name] = values[name].resolve()
    opts = Options(**values)
    if not (opts.bench / "instances.csv").exists() and opts.instances is None:
        raise UsageError(f"{opts.bench}: not a benchmark folder (no instances.csv)")
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    if not tools or set(tools) - set(TOOLS):
        raise UsageError(f"--tools {args.tools}: expected ours, abcrown or ours,abcrown")
    opts.tools = [t for t in TOOLS if t in tools]
    check_options(opts)
    return opts


def check_options(opts: Options) -> None:
    if not opts.timeout_scale > 0:
        raise UsageError("--timeout-scale must be > 0")
    if opts.limit is not None and opts.limit < 1:
        raise UsageError("--limit must be >= 1")
    if opts.threads is not None and opts.threads < 1:
        raise UsageError("--threads must be >= 1")
    if opts.parts < 1:
        raise UsageError("--parts must be >= 1")
    for opt in ("ours_csv", "abcrown_csv"):
        if getattr(opts, opt):
            _need(getattr(opts, opt), "--" + opt.replace("_", "-"))
    if "abcrown" in opts.tools and not opts.abcrown_csv:
        _check_abcrown(opts)
    if opts.expected:
        _need(opts.expected, "--expected")
    if opts.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise UsageError("--device cuda: torch sees no CUDA device here")


def _check_abcrown(opts: Options) -> None:
    for opt in ("abcrown", "auto_lirpa"):
        if getattr(opts, opt) is None:
            raise UsageError(f"--{opt.replace('_', '-')} DIR is needed to run alpha,beta-CROWN "
                             "(or --abcrown-csv CSV of an earlier run)")
    _need(opts.abcrown / "complete_verifier" / "abcrown.py", "--abcrown")
    _need(opts.auto_lirpa / "auto_LiRPA" / "__init__.py", "--auto-lirpa")
    if opts.onnx2pytorch:
        _need(opts.onnx2pytorch / "onnx2pytorch" / "__init__.py", "--onnx2pytorch")
    if opts.abcrown_config:
        _need(opts.abcrown_config, "--abcrown-config")


def _need(path: Path, option: str) -> None:
    if not path.exists():
        raise UsageError(f"{option}: {path}: no such file")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _main(args)
    except (UsageError, CliError) as exc:
        print(f"{PROG}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_ERROR


def _ours(opts: Options, instances: list[Instance], env: dict, work: Path, t_start: float) -> ToolRun:
    if opts.ours_csv:
        return read_tool_csv(opts.ours_csv, instances, "ours")
    pass_device = ours_supports_device(opts.python, env)
    if not pass_device and opts.device != "cpu":
        raise UsageError(f"dtensor-verify benchmark has no --device option in {ROOT}: it would run "
                         f"on the CPU, not on {opts.device}; use a checkout with --device, or --tools abcrown")
    share = None if opts.deadline is None else \
        max(opts.deadline * OURS_SHARE - (time.perf_counter() - t_start), 1.0)
    print(f"[{PROG}] ours: {len(instances)} instance(s) ...", file=sys.stderr, flush=True)
    return run_ours(opts, instances, env, work, share, pass_device)


def _abcrown(opts: Options, instances: list[Instance], env: dict, work: Path,
             deadline: float | None) -> tuple[ToolRun, list]:
    if opts.abcrown_csv:
        return read_tool_csv(opts.abcrown_csv, instances, "abcrown"), []
    print(f"[{PROG}] alpha,beta-CROWN: {len(instances)} instance(s) ...", file=sys.stderr, flush=True)
    abc, groups = run_abcrown(opts, opts.bench.name, instances, env, work, deadline)
    write_tool_csv(opts.out / "abcrown.csv", instances, abc.outcomes)
    return abc, groups


def _tool_env(opts: Options) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    if opts.threads:
        env["OMP_NUM_THREADS"] = str(opts.threads)
    return env


def _main(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    opts = to_options(args)
    instances = select_instances(opts.bench, opts.instances, opts.filter, opts.limit, opts.timeout_scale)
    expected = read_expected(opts.expected) if opts.expected else {}
    opts.out.mkdir(parents=True, exist_ok=True)
    opts.out = opts.out.resolve()
    work = (opts.work or opts.out / "work").resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = _tool_env(opts)
    deadline = t_start + opts.deadline if opts.deadline else None

    runs, groups, ours, abc = [], [], None, None
    if "ours" in opts.tools:
        ours = _ours(opts, instances, env, work, t_start)
        runs.append(ours)
    if "abcrown" in opts.tools:
        abc, groups = _abcrown(opts, instances, env, work, deadline)
        runs.append(abc)

    rows = merge(instances, expected, ours, abc)
    write_results_csv(opts.out / "results.csv", rows)
    table, printed = render(opts, gather_facts(opts), instances, rows, runs, groups)
    (opts.out / "table.md").write_text(table)
    print(printed, end="")
    print(f"[{PROG}] wrote {opts.out / 'results.csv'} and {opts.out / 'table.md'}", file=sys.stderr)
    flagged = [f for r in rows for f in r.flags()]
    for f in flagged:
        print(f"[{PROG}] {f}", file=sys.stderr)
    return EXIT_CONTRADICTION if flagged else EXIT_OK
