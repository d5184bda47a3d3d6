"""`dtensor-verify`: the command line.

    dtensor-verify bounds MODEL (--vnnlib SPEC | --lower FILE --upper FILE) [--method M] [--json OUT]
    dtensor-verify run --onnx M --vnnlib S --results OUT --timeout T [--json J]
    dtensor-verify benchmark DIR --csv OUT [--instances CSV] [--expected CSV] [--filter SUB] [--resume]

Every command takes `--device auto|cpu|cuda|cuda:N` (default auto: the GPU when there is one;
under torchrun each rank's own, cuda:LOCAL_RANK).

User errors (unreadable or malformed model / property / box files, unsupported operations, bad
plans) give one line `dtensor-verify: error: <message>` on stderr (under torchrun: from rank 0
only), an `error` result file where one was asked for, and exit status 2. Bugs keep their
traceback. `run`'s results file and time limit under faults: see run_guard.py and the README.

Start-up matters (under VNN-COMP every instance is a new process): nothing heavy is imported at
the top of this module, so arguments are parsed (and bad ones refused) before torch is imported.

The commands live in modules of their own: cli_bounds.py (`bounds`), cli_run.py (`run`),
benchmark.py (`benchmark`), solver_cli.py (the VNN-LIB 2.0 `verify` / `supports`); what they share
is in cli_common.py.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from .cli_bounds import add_bounds_command, cmd_bounds  # noqa: F401 - cmd_*: the commands, by name
from .cli_common import (EXIT_ERROR, METHOD_CHOICES, PROG, add_bab_arguments, add_device_argument,
                         add_mesh_argument, apply_plan, command_device, err, is_rank0, one_line, read_property,
                         stderr_log, user_errors)
from .cli_run import COLLECTIVE_SLACK_S, add_run_command, cmd_run  # noqa: F401

# When main() started, as time.time() and time.perf_counter() (the start-up breakdown of `run`).
_MAIN_ENTERED_AT: float | None = None
_MAIN_ENTERED_PERF: float | None = None

# solver_cli.register (the VNN-LIB 2.0 commands) gets this module and uses these helpers by name.
_device, _read_property, _apply_plan, _is_rank0, _stderr_log = (command_device, read_property, apply_plan,
                                                                  is_rank0, stderr_log)
_add_bab_arguments, _add_mesh_argument, _add_device = add_bab_arguments, add_mesh_argument, add_device_argument


# ------------------------------------------------------------------------------------------ benchmark

def cmd_benchmark(args) -> int:
    from .benchmark import cmd_benchmark as run_benchmark   # dtensor_verify/benchmark.py

    return run_benchmark(args)


# ------------------------------------------------------------------------------------------ main

class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: same one-line format, status 2
        self.print_usage(sys.stderr)
        err(message)
        raise SystemExit(EXIT_ERROR)


def _add_benchmark_command(sub):
    k = sub.add_parser("benchmark", help="run every instance of a VNN-COMP benchmark folder")
    k.add_argument("dir", metavar="DIR")
    k.add_argument("--instances", metavar="CSV", help="instances file (default DIR/instances.csv)")
    k.add_argument("--expected", metavar="CSV", help="known verdicts (header onnx,vnnlib,verdict)")
    k.add_argument("--csv", required=True, metavar="OUT", help="per-instance results")
    k.add_argument("--timeout-scale", type=float, default=1.0, metavar="F")
    k.add_argument("--limit", type=int, default=None, metavar="N", help="first N instances only")
    k.add_argument("--filter", default=None, metavar="SUBSTRING",
                   help="only instances whose onnx or vnnlib path contains SUBSTRING")
    k.add_argument("--methods", nargs="+", default=["crown", "alpha-crown"], choices=METHOD_CHOICES)
    k.add_argument("--quiet", action="store_true", help="no progress bar")
    k.add_argument("--verbose", action="store_true", help="pipeline messages per instance")
    add_bab_arguments(k)
    k.add_argument("--stuck-grace", type=float, default=None, metavar="S",
                   help="an instance still running S seconds past its limit is ended by a watchdog with a "
                        "`timeout` row and the run goes on (default 5 s + 10%% of the limit)")
    k.add_argument("--resume", action="store_true",
                   help="keep the rows already in --csv and run only the instances without one")
    k.add_argument("--shard-instances", action="store_true",
                   help="under torchrun: rank r of P runs instances r, r+P, ... on its own device; all ranks "
                        "append to the one --csv, rank 0 prints the summary")
    add_device_argument(k)
    k.set_defaults(func=cmd_benchmark)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = _Parser(prog=PROG, description="Neural-network verification by bound propagation (IBP, CROWN, "
                                       "alpha-CROWN) on PyTorch DTensors.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for add in (add_bounds_command, add_run_command, _add_benchmark_command):
        add(sub)
    from .solver_cli import register     # VNN-LIB 2.0 command line: verify, supports, --name
    register(p, sub, sys.modules[__name__])     # its helpers are passed, not imported: no import cycle
    return p


def _run_command(args) -> int:
    code = args.func(args)
    if "torch.distributed" in sys.modules:      # never import it (0.1-0.8 s) just to learn it is unused
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            from placements.mesh import exit_now_if_distributed
            exit_now_if_distributed(code)
    return code


PEER_ERROR_GRACE_S = 5.0


def _reports_errors() -> bool:
    """Under torchrun every rank meets the same user error: only rank 0 prints it."""
    from .run_guard import torchrun_rank

    return torchrun_rank() in (None, 0)


def _write_error_result(args) -> None:
    """`error` in the results file of a `run` that failed, if its path passed the checks."""
    results = getattr(args, "results_file", None)
    if results is not None:
        results.write_fallback("error")


def _exit_code(code: int) -> int:
    """Leave at once if a process group is up (see exit_now_if_distributed), else return."""
    if "torch.distributed" in sys.modules:
        from placements.mesh import exit_now_if_distributed
        exit_now_if_distributed(code)
    return code


def main(argv=None) -> int:
    """The command line (`argv=None`: sys.argv, and `run --timeout` counts from the start of
    this process, imports included, as a harness counts; a given `argv`, as in tests or when
    embedded, counts from this call)."""
    global _MAIN_ENTERED_AT, _MAIN_ENTERED_PERF
    _MAIN_ENTERED_AT, _MAIN_ENTERED_PERF = time.time(), time.perf_counter()
    started_at = time.perf_counter()
    if argv is None:
        from .run_guard import job_age_s, process_age_s
        age = job_age_s()                   # under dtensor_verify.launch: since the launcher started
        started_at -= process_age_s() if age is None else age
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else EXIT_ERROR
    args.started_at = started_at
    args.main_entered_at, args.main_entered_perf = _MAIN_ENTERED_AT, _MAIN_ENTERED_PERF   # run --json
    if args.threads is not None:
        import torch
        if args.threads < 1:
            err("--threads must be >= 1")
            return EXIT_ERROR
        cap = min(1024, 4 * (os.cpu_count() or 1))      # torch crashes on absurd counts (100000)
        if args.threads > cap:
            err(f"--threads {args.threads} is more than {cap} (4 x the {os.cpu_count()} CPUs, at most 1024)")
            return EXIT_ERROR
        torch.set_num_threads(args.threads)
    try:
        code = _run_command(args)
        if argv is None and args.command == "run":
            # The command line's run: leave without the interpreter's clean-up (0.1-0.5 s with
            # torch loaded on a busy machine), so the job ends by its time limit.
            from .run_guard import flush_and_exit
            flush_and_exit(code)
        return code
    except user_errors() as exc:
        if _reports_errors():
            err(one_line(exc))
        else:
            # Every rank meets the same user error and only rank 0 prints it: give rank 0 the time
            # to, before this rank's exit makes torchrun stop it (its line was lost under load).
            # Rank 0's own exit ends this wait: torchrun then stops this rank.
            time.sleep(PEER_ERROR_GRACE_S)
        _write_error_result(args)
        return _exit_code(EXIT_ERROR)
    except KeyboardInterrupt:
        err("interrupted")
        return _exit_code(130)
    except Exception:
        # A bug: keep the traceback, but a harness waiting for the result file still gets one.
        _write_error_result(args)
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
