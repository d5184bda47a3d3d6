"""`dtensor-verify run`: verify one VNN-COMP instance and write its results file (its life cycle
and the time limit under faults: run_guard.py; the commands: cli.py)."""
from __future__ import annotations

import math
import sys
import time

from .cli_common import (EXIT_ERROR, EXIT_OK, METHOD_CHOICES, CliError, add_bab_arguments, add_device_argument,
                         add_mesh_argument, apply_plan, bab_options, command_device, err, is_rank0, load_model,
                         memory_report_dict, one_line, read_property, stderr_log, warn, write_json)


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
    watch = _Stopwatch(since=getattr(args, "main_entered_perf", None))   # "imports" = parsing and every import
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

    model = load_model(args.onnx, command_device(args))
    watch.lap("load")
    prop = read_property(args.vnnlib, model)
    watch.lap("property")
    plan = apply_plan(model, args.plan, args.quiet, timeout_s=left() + COLLECTIVE_SLACK_S,
                      mesh=args.mesh, bab=not args.no_bab)
    watch.lap("plan")
    lead = is_rank0(model)
    res = verify_instance(model, prop, args.onnx, left(), methods=tuple(args.methods),
                          attack=not args.no_attack, log=stderr_log(args.quiet or not lead),
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
                     "memory": memory, "weight_collectives": _hold_stats(model), "startup": {"main_entered_at": getattr(args, "main_entered_at", None), **watch.seconds}})
        try:
            write_json(args.json, data)
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


def _hold_stats(model) -> dict:
    """Rank 0's weight collectives and the searches' held layers (placements/hold.py); {} in
    one process or without sharded-at-rest weights."""
    stats = getattr(model.layout, "hold_stats", None)
    return stats() if stats is not None else {}


def _memory_report_or_warn(model, lead: bool) -> dict:
    """The JSON's memory entry (a collective). After the verdict, so a failure is only a warning."""
    try:
        return memory_report_dict(model)
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


def add_run_command(sub):
    r = sub.add_parser("run", help="verify one VNN-COMP instance and write the result file")
    r.add_argument("--onnx", required=True, metavar="MODEL")
    r.add_argument("--vnnlib", required=True, metavar="SPEC")
    r.add_argument("--results", required=True, metavar="OUT", help="result file (verdict, counterexample)")
    r.add_argument("--timeout", required=True, type=float, metavar="SECONDS")
    r.add_argument("--json", metavar="J", help="write details (bounds, phases, timings) as JSON")
    r.add_argument("--plan", default=None)
    r.add_argument("--methods", nargs="+", default=["crown", "alpha-crown"], choices=METHOD_CHOICES)
    r.add_argument("--no-attack", action="store_true", help="skip the PGD attack (never finds sat)")
    add_bab_arguments(r)
    add_mesh_argument(r)
    r.add_argument("--quiet", action="store_true", help="no progress messages on stderr")
    add_device_argument(r)
    r.set_defaults(func=cmd_run)
