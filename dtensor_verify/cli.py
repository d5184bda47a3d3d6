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
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from pathlib import Path

from .cli_common import (EXIT_ERROR, EXIT_OK, PROG, CliError, bab_options, err, load_model, one_line,
                         user_errors, warn)

# When main() started, as time.time() and time.perf_counter() (the start-up breakdown of `run`).
_MAIN_ENTERED_AT: float | None = None
_MAIN_ENTERED_PERF: float | None = None


def _device(args):
    """The `--device` of a command as a torch.device (made this process's current CUDA device)."""
    from .device import resolve_device, use_device

    device = resolve_device(args.device, what=f"--device {args.device}")
    use_device(device)
    return device


# ------------------------------------------------------------------------------------------ shared

def _read_property(path: str, model):
    from .specs import read_vnnlib

    p = Path(path)
    if not p.exists() and not Path(str(p) + ".gz").exists():
        raise CliError(f"{path}: no such file")
    return read_vnnlib(str(p), n_inputs=model.n_inputs, n_outputs=model.n_outputs)


def _apply_plan(model, plan: str | None, quiet: bool, timeout_s: float | None = None, mesh: str | None = None,
                bab: bool = False):
    """Apply `--plan` (and `--mesh`) through placements.apply_plan_from_cli; returns a printable
    description. `timeout_s`: how long a collective may wait (the process group's timeout) under
    torchrun. `bab`: the run may branch and bound (the plan checker refuses `tp` there on CPU for
    small layers)."""
    if plan is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        plan = "replicate"
    if plan is None:
        return None
    from placements import apply_plan_from_cli

    apply_plan_from_cli(model, plan, log=not quiet, timeout_s=timeout_s, mesh_shape=mesh, bab=bab)
    return plan


def _memory_report(model, rep=None) -> dict:
    """The JSON `memory` entry (a collective: every rank calls)."""
    from .memory import memory_report

    return memory_report(model, rep)


def _metered(model, fn):
    """Run `fn()` under the memory meter; returns (result, memory dict)."""
    from .memory import measure

    with measure(model) as rep:
        out = fn()
    return out, _memory_report(model, rep)


def _is_rank0(model) -> bool:
    """The rank that prints and writes results: global rank 0 (a dp group's rank 0 is not)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return model.layout.rank == 0


def _write_json(path: str, data: dict) -> None:
    def default(o):
        import numpy as np
        import torch

        if isinstance(o, torch.Tensor):
            return o.detach().cpu().tolist()
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, (np.floating, np.integer)):
            return o.item()
        return str(o)

    text = json.dumps(data, indent=2, default=default, allow_nan=True)
    Path(path).write_text(text + "\n")


def _read_vector(path: str) -> "np.ndarray":
    import numpy as np

    p = Path(path)
    if not p.exists():
        raise CliError(f"{path}: no such file")
    if p.suffix == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise CliError(f"{path}: not a readable .npy file ({one_line(exc)})") from None
        return np.asarray(arr, dtype=np.float64).ravel()
    text = p.read_text()
    tokens = [t for t in re.split(r"[\s,;]+", text.strip()) if t]
    if not tokens:
        raise CliError(f"{path}: no numbers in file")
    values = []
    for i, t in enumerate(tokens):
        try:
            values.append(float(t))
        except ValueError:
            raise CliError(f"{path}: value {i + 1} ('{t[:30]}') is not a number") from None
    return np.asarray(values, dtype=np.float64)


# ------------------------------------------------------------------------------------------ bounds

def _check_bounds_args(args) -> None:
    from .run_guard import input_candidates, refuse_overlaps

    refuse_overlaps({"--json": args.json}, [("MODEL", args.model), *input_candidates("--vnnlib", args.vnnlib),
                                            ("--lower", args.lower), ("--upper", args.upper)])
    if args.vnnlib is None and (args.lower is None or args.upper is None):
        raise CliError("give --vnnlib SPEC, or both --lower FILE and --upper FILE")
    if args.vnnlib is not None and (args.lower is not None or args.upper is not None):
        raise CliError("--vnnlib and --lower/--upper are exclusive")
    if args.spec_rows and args.vnnlib is None:
        raise CliError("--spec-rows needs --vnnlib (the rows come from its output constraints)")
    if args.iterations is not None and args.iterations < 0:
        raise CliError("--iterations must be >= 0")


def _spec_rows(path, region, device):
    """C [1, K, n_out] (on `device`), d [K] (CPU) and labels of every row of the region's disjuncts."""
    import numpy as np
    import torch

    rows_C, rows_d, labels = [], [], []
    for j, dj in enumerate(region.disjuncts):
        for i in range(dj.C.shape[0]):
            rows_C.append(dj.C[i])
            rows_d.append(dj.d[i])
            labels.append(f"d{j}.r{i}")
    if not rows_C:
        raise CliError(f"{path}: the first region has no output constraint rows to bound")
    C = torch.tensor(np.stack(rows_C), dtype=torch.float32, device=device).unsqueeze(0)
    d = torch.tensor(np.asarray(rows_d), dtype=torch.float32, device="cpu")   # subtracted on the CPU
    return C, d, labels


def _bounds_input(args, model):
    """(lo, hi, C, d, labels, spec description) from --vnnlib [--spec-rows] or --lower/--upper."""
    import numpy as np

    C = d = None
    labels = [f"Y_{j}" for j in range(model.n_outputs)]
    if args.vnnlib is None:
        lo, hi = _read_vector(args.lower), _read_vector(args.upper)
        for what, v, f in (("lower", lo, args.lower), ("upper", hi, args.upper)):
            if v.size != model.n_inputs:
                raise CliError(f"{f}: {v.size} {what} bounds, the model has {model.n_inputs} inputs")
        return lo, hi, C, d, labels, {"lower": str(args.lower), "upper": str(args.upper)}
    prop = _read_property(args.vnnlib, model)
    if not prop.regions:
        raise CliError(f"{args.vnnlib}: the property has no satisfiable region, so no input box")
    region = prop.regions[0]
    spec_desc = {"path": str(args.vnnlib), "regions": len(prop.regions), "region": 0}
    if args.spec_rows:
        C, d, labels = _spec_rows(args.vnnlib, region, model.device)
        spec_desc["rows"] = labels
    return np.asarray(region.lower), np.asarray(region.upper), C, d, labels, spec_desc


def _print_bounds(args, method, seconds, labels, lower, upper) -> None:
    what = "C y - d" if args.spec_rows else "outputs"
    print(f"{Path(args.model).name}: {method} bounds of the {what} ({seconds:.3f} s)")
    print(f"  {'':<8} {'lower':>14} {'upper':>14}")
    show = len(labels) if len(labels) <= 40 else 30
    for name, lo_v, hi_v in list(zip(labels, lower, upper))[:show]:
        print(f"  {name:<8} {lo_v:>14.6g} {hi_v:>14.6g}")
    if show < len(labels):
        print(f"  ... {len(labels) - show} more (see --json)")


def cmd_bounds(args) -> int:
    import torch

    from .methods import AlphaOptions
    from .methods.dispatch import normalize_method

    method = normalize_method(args.method)
    _check_bounds_args(args)
    model = load_model(args.model, _device(args))
    lo, hi, C, d, labels, spec_desc = _bounds_input(args, model)
    plan = _apply_plan(model, args.plan, args.quiet)
    alpha_opts = AlphaOptions(iterations=args.iterations) if args.iterations is not None else None
    x_lo = torch.tensor(lo, dtype=torch.float32, device=model.device).reshape(1, *model.input_shape)
    x_hi = torch.tensor(hi, dtype=torch.float32, device=model.device).reshape(1, *model.input_shape)

    def bound():
        return model.compute_bounds(x_lo, x_hi, method=method, C=C, alpha_options=alpha_opts)

    t0 = time.perf_counter()
    res = bound()
    seconds = time.perf_counter() - t0
    # A second, metered pass: the meter slows bounding, so `seconds` comes from the first.
    memory = _metered(model, bound)[1] if args.json and not args.no_memory else {}
    lower, upper = res.lower[0].detach().cpu().double(), res.upper[0].detach().cpu().double()
    if d is not None:
        lower, upper = lower - d.double(), upper - d.double()
    lower, upper = lower.tolist(), upper.tolist()
    if not _is_rank0(model):
        return EXIT_OK
    if not args.quiet or args.json is None:
        _print_bounds(args, method, seconds, labels, lower, upper)
    if args.json:
        data = {"lower": lower, "upper": upper, "labels": labels, "method": method, "seconds": seconds,
                "device": str(model.device), "world_size": model.layout.world_size, "plan": plan or "replicate",
                "memory": memory, "model": str(args.model), "spec": spec_desc, "spec_rows": bool(args.spec_rows)}
        if res.info.get("iterations") is not None:
            data["iterations"] = res.info["iterations"]
        _write_json(args.json, data)
    return EXIT_OK


# ------------------------------------------------------------------------------------------ run

def _stderr_log(quiet: bool):
    if quiet:
        return None
    return lambda msg: print(f"[{PROG}] {msg}", file=sys.stderr, flush=True)


class _Stopwatch:
    """Seconds per start-up phase, for `run --json` (scripts/startup_time.py reads them)."""

    def __init__(self, since: float | None = None):
        self.seconds: dict[str, float] = {}
        self._last = since if since is not None else time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self._last
        self._last = now


def _import_engine() -> None:
    """The imports `run` needs, in one place so that their cost shows as one phase."""
    from . import api, verify  # noqa: F401
    from ._lazy_onnx2torch import import_onnx2torch

    import_onnx2torch()


# Collectives may wait this much past the time limit before failing; longer than the watchdog's
# grace, so a stuck peer is handled by the watchdog (which also ends the stuck rank) first.
COLLECTIVE_SLACK_S = 10.0


def cmd_run(args) -> int:
    """Verify one instance. The results file's life cycle and the watchdog: see run_guard."""
    watch = _Stopwatch(since=_MAIN_ENTERED_PERF)      # "imports" = argument parsing and every import
    from .run_guard import ResultsFile, Watchdog, input_candidates, refuse_overlaps, torchrun_rank

    t0 = getattr(args, "started_at", None) or time.perf_counter()     # see main()
    refuse_overlaps({"--results": args.results, "--json": args.json},
                    [("--onnx", args.onnx), *input_candidates("--vnnlib", args.vnnlib)])
    args.stopwatch = watch
    rank = torchrun_rank()
    # Refuse a symlink / device / directory / missing directory before any work.
    results = ResultsFile(args.results, rank=rank or 0, torchrun=rank is not None)
    args.results_file = results          # main() writes `error` through it on a failure
    if not (args.timeout > 0 and math.isfinite(args.timeout)):
        raise CliError(f"--timeout must be a positive number of seconds, not {args.timeout}")
    with Watchdog(args.timeout, results, rank=rank or 0, torchrun=rank is not None,
                  used_s=time.perf_counter() - t0):
        results.reset()
        try:
            return _run_instance(args, results, t0)
        except BaseException:
            # Written while the watchdog still catches SIGTERM: under torchrun the launcher
            # stops the other ranks as soon as this one exits.
            results.write_fallback("error")
            raise


def _run_instance(args, results, t0: float) -> int:
    watch = args.stopwatch
    _import_engine()
    from .verify import verify_instance

    watch.lap("imports")

    from .run_guard import torchrun_rank, verify_reserve_s

    reserve = verify_reserve_s(torchrun_rank() is not None)     # to end the job by the limit

    def left() -> float:
        return max(args.timeout - reserve - (time.perf_counter() - t0), 0.0)

    model = load_model(args.onnx, _device(args))
    watch.lap("load")
    prop = _read_property(args.vnnlib, model)
    watch.lap("property")
    plan = _apply_plan(model, args.plan, args.quiet, timeout_s=left() + COLLECTIVE_SLACK_S,
                       mesh=args.mesh, bab=not args.no_bab)
    watch.lap("plan")
    lead = _is_rank0(model)
    res = verify_instance(model, prop, args.onnx, left(), methods=tuple(args.methods),
                          attack=not args.no_attack, log=_stderr_log(args.quiet or not lead),
                          bab=not args.no_bab, bab_options=bab_options(args))
    watch.lap("verify")
    # The verdict goes to the results file first: nothing after it (memory report, JSON) can
    # change it. Ranks other than 0 only write `error`, and only where rank 0 has not written.
    if time.perf_counter() - t0 > args.timeout and res.verdict != "error":
        res.verdict, res.message = "timeout", f"a verdict came after the time limit of {args.timeout:g} s"
    if lead:
        x, y = res.counterexample if res.counterexample is not None and res.verdict == "sat" else (None, None)
        results.write_verdict(res.verdict, x, y)
    elif res.verdict == "error":
        results.write_verdict("error")
    watch.lap("write")
    memory = _memory_report_or_warn(model, lead) if args.json else {}
    if not lead:
        return EXIT_ERROR if res.verdict == "error" else EXIT_OK
    if args.json:
        data = res.as_dict()
        data.update({"onnx": str(args.onnx), "vnnlib": str(args.vnnlib), "timeout": args.timeout,
                     "total_seconds": time.perf_counter() - t0, "plan": plan or "replicate",
                     "device": str(model.device), "world_size": model.layout.world_size,
                     "memory": memory, "startup": {"main_entered_at": _MAIN_ENTERED_AT, **watch.seconds}})
        try:
            _write_json(args.json, data)
        except OSError as exc:
            warn(f"--json {one_line(exc)}: the JSON report was not written; the verdict "
                  f"'{res.verdict}' stands in {args.results}")
    print(res.verdict, flush=True)
    if res.verdict == "error":
        if _peer_failure(model, res):
            err(f"a collective failed: another rank died or stopped answering ({res.message[:300]})")
            return EXIT_ERROR
        if res.traceback:
            print(res.traceback, file=sys.stderr, end="")
        err(res.message or "verification failed")
        return EXIT_ERROR
    return EXIT_OK


def _memory_report_or_warn(model, lead: bool) -> dict:
    """The JSON's memory entry (a collective). After the verdict, so a failure is only a warning."""
    try:
        return _memory_report(model)
    except Exception as exc:    # noqa: BLE001 - e.g. a peer rank died after the verdict
        if lead:
            warn(f"memory report failed ({one_line(exc)}); the JSON has no memory entry")
        return {}


# How gloo / NCCL / c10d word a collective that failed because a peer is gone or stuck.
_PEER_FAILURE_TEXT = ("Connection reset by peer", "Connection closed by peer", "Broken pipe",
                      "Timed out waiting", "timed out", "DistBackendError", "NCCL communicator was aborted")


def _peer_failure(model, res) -> bool:
    """Did verification fail because a collective failed (a peer rank died or timed out)?
    That is a fault of the run, not a bug in this process: one line, no traceback."""
    if model.layout.world_size <= 1 or not res.message:
        return False
    return any(text in res.message for text in _PEER_FAILURE_TEXT)


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


def _add_bab_arguments(p):
    p.add_argument("--no-bab", action="store_true",
                   help="stop after the bounds (no branch and bound: incomplete, answers unknown more often)")
    p.add_argument("--bab-batch", type=int, default=None, metavar="N",
                   help="domains split per round per worker (default: from the free memory)")
    p.add_argument("--branching", default="fsb", choices=["fsb", "babsr"],
                   help="branching heuristic (default fsb: filtered smart branching)")
    p.add_argument("--bab-split", default="auto", choices=["auto", "relu", "input"],
                   help="what branch and bound splits: input boxes, ReLU neurons, or auto (input boxes when "
                        "the property perturbs at most 16 inputs or the network has no ReLU)")


def _add_mesh_argument(p):
    p.add_argument("--mesh", default=None, metavar="DPxSHARD",
                   help="under torchrun: DP groups of SHARD ranks; the plan applies within a group, "
                        "branch-and-bound domains are spread over all ranks (default 1xP)")


METHOD_CHOICES = ["ibp", "crown", "alpha-crown"]


def _add_device(parser):
    parser.add_argument("--device", default="auto", metavar="DEV",
                        help="auto | cpu | cuda | cuda:N (default auto: the GPU when there is one; under "
                             "torchrun each rank's own, cuda:LOCAL_RANK). Counterexamples are still "
                             "confirmed by onnxruntime on the CPU")


def _add_bounds_command(sub):
    b = sub.add_parser("bounds", help="bounds of the network outputs (or spec rows) over an input box")
    b.add_argument("model", metavar="MODEL", help="ONNX file (.onnx or .onnx.gz)")
    b.add_argument("--vnnlib", metavar="SPEC", help="VNN-LIB file; its first input box is used")
    b.add_argument("--lower", metavar="FILE", help="input lower bounds (text: whitespace/comma separated, or .npy)")
    b.add_argument("--upper", metavar="FILE", help="input upper bounds")
    b.add_argument("--method", default="crown", help="ibp | crown | alpha-crown (default: crown)")
    b.add_argument("--spec-rows", action="store_true", help="bound the rows C y - d of the spec instead of y")
    b.add_argument("--json", metavar="OUT", help="write the bounds and run facts as JSON")
    b.add_argument("--iterations", type=int, default=None, help="alpha-CROWN iterations")
    b.add_argument("--plan", default=None, help="placement plan, e.g. 'fsdp' or 'fc1=tp;*=replicate'")
    b.add_argument("--quiet", action="store_true", help="no table when --json is given")
    b.add_argument("--no-memory", action="store_true",
                   help="skip the metered second pass that fills the JSON's 'memory' entry")
    _add_device(b)
    b.set_defaults(func=cmd_bounds)


def _add_run_command(sub):
    r = sub.add_parser("run", help="verify one VNN-COMP instance and write the result file")
    r.add_argument("--onnx", required=True, metavar="MODEL")
    r.add_argument("--vnnlib", required=True, metavar="SPEC")
    r.add_argument("--results", required=True, metavar="OUT", help="result file (verdict, counterexample)")
    r.add_argument("--timeout", required=True, type=float, metavar="SECONDS")
    r.add_argument("--json", metavar="J", help="write details (bounds, phases, timings) as JSON")
    r.add_argument("--plan", default=None)
    r.add_argument("--methods", nargs="+", default=["crown", "alpha-crown"], choices=METHOD_CHOICES)
    r.add_argument("--no-attack", action="store_true", help="skip the PGD attack (never finds sat)")
    _add_bab_arguments(r)
    _add_mesh_argument(r)
    r.add_argument("--quiet", action="store_true", help="no progress messages on stderr")
    _add_device(r)
    r.set_defaults(func=cmd_run)


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
    _add_bab_arguments(k)
    k.add_argument("--resume", action="store_true",
                   help="keep the rows already in --csv and run only the instances without one")
    k.add_argument("--shard-instances", action="store_true",
                   help="under torchrun: rank r of P runs instances r, r+P, ... on its own device; all ranks "
                        "append to the one --csv, rank 0 prints the summary")
    _add_device(k)
    k.set_defaults(func=cmd_benchmark)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = _Parser(prog=PROG, description="Neural-network verification by bound propagation (IBP, CROWN, "
                                       "alpha-CROWN) on PyTorch DTensors.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for add in (_add_bounds_command, _add_run_command, _add_benchmark_command):
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
