"""`torchrun` that reports a failed run in one line and exits with the ranks' own status.

    python -m dtensor_verify.launch --standalone --nproc-per-node 2 -m dtensor_verify run ...

Takes exactly torchrun's arguments (it runs `torch.distributed.run` in-process; a single-host
`--standalone --nproc-per-node N -m ...` job starts its ranks without importing torch, with
torchrun's environment and failure rules: fast_launch.py; DTENSOR_VERIFY_LAUNCHER=torchrun
always uses torchrun). Plain
`torchrun` ends any run where a rank exits non-zero with a ~40-line ChildFailedError block and
exit status 1, so a refused input (status 2 from every rank, one line from rank 0) would drown.
This launcher instead:

* keeps torchrun's own log lines quiet (its `LOGLEVEL`, default here CRITICAL: set
  `LOGLEVEL=INFO` to see them);
* prints nothing more for ranks that exited by themselves (they said why: rank 0 prints the
  one-line error), and one line per rank killed by a signal other than the SIGTERM torchrun
  itself sends to the remaining ranks once one has failed;
* exits with 0 if rank 0 finished by itself (its verdict is in the results file), 124 if a
  watchdog had to end the run at its time limit (`timeout` in the results file), 2 for any
  other failure (a refused input, an `error` verdict, a rank that died: `error` in the results
  file), and 128 + N when the launcher itself got signal N (e.g. 143 for SIGTERM, which
  torchrun passes on to the ranks: they write `error` and stop).
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

PROG = "dtensor-verify"
EXIT_ERROR = 2
EXIT_WATCHDOG = 124          # run_guard.EXIT_WATCHDOG


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def exit_status(failures: dict) -> int:
    """The launcher's status from torchrun's failures ({global rank: ProcessFailure}).

    0 when rank 0 finished by itself (it wrote the verdict and printed it; a later failure of
    another rank cannot change that verdict), 124 when a watchdog had to end the run at its time
    limit (the results file says `timeout`), else 2: the run ended in error (a refused input,
    an `error` verdict, a rank that died), and the results file, if any, says `error`.
    """
    if 0 not in failures:
        return 0
    if any(f.exitcode == EXIT_WATCHDOG for f in failures.values()):
        return EXIT_WATCHDOG
    return EXIT_ERROR


def failure_lines(failures: dict, first_rank: int) -> list[str]:
    """One line per rank killed by a signal, leaving out torchrun's own clean-up SIGTERMs."""
    lines = []
    for rank in sorted(failures):
        f = failures[rank]
        if f.exitcode >= 0:
            continue
        if -f.exitcode == signal.SIGTERM and rank != first_rank:
            continue                               # torchrun stopping the rest after a failure
        lines.append(f"{PROG}: error: rank {rank} (pid {f.pid}) was killed by {_signal_name(-f.exitcode)}")
    return lines


def _quiet_torchrun_logs() -> None:
    """torchrun's loggers take their level from LOGLEVEL when created: set it for those still to
    come, and lower the ones that exist already."""
    level = os.environ.setdefault("LOGLEVEL", "CRITICAL")
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("torch.distributed.elastic", "torch.distributed.run", "torch.distributed.launcher")):
            logging.getLogger(name).setLevel(level)


def _option(argv: list[str], name: str) -> str | None:
    """The value of `name` (`--x V` or `--x=V`) in the ranks' command line, or None."""
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


class JobDeadline:
    """The job's one deadline (issue 18): `--timeout T` of the ranks' `run` counts from this
    launcher's start, passed to the ranks in run_guard.JOB_START_ENV. The ranks stop their work
    and their watchdogs act before T; should anything still run at T - LAUNCHER_RESERVE_S, this
    kills the ranks, writes `timeout` where no verdict was written, and ends the launcher."""

    def __init__(self, script_args: list[str]):
        from .run_guard import JOB_START_ENV, process_age_s

        self.start = time.time() - process_age_s()
        os.environ[JOB_START_ENV] = repr(self.start)
        raw = _option(script_args, "--timeout")
        self.results = _option(script_args, "--results")
        try:
            self.timeout = float(raw) if raw is not None else None
        except ValueError:
            self.timeout = None
        if self.timeout is not None and self.timeout > 0 and self.timeout < 1e9:
            threading.Thread(target=self._watch, name="dtensor-verify-deadline", daemon=True).start()

    def _watch(self) -> None:
        from .run_guard import LAUNCHER_RESERVE_S

        time.sleep(max(self.start + self.timeout - LAUNCHER_RESERVE_S - time.time(), 0.0))
        _kill_children()
        written = False
        if self.results is not None:
            try:
                from .specs import write_result_file
                written = write_result_file(self.results, "timeout", only_if_absent=True)
            except Exception:       # noqa: BLE001 - a refused path: the ranks said why
                pass
        if written:
            print(f"{PROG}: error: the job was still running at its time limit of {self.timeout:g} s; "
                  f"results file: timeout", file=sys.stderr, flush=True)
        os._exit(EXIT_WATCHDOG if written or self.results is None else 0)


def _kill_children() -> None:
    """SIGKILL this process's children (the ranks) and wait until they are gone (at most 0.2 s)."""
    me, kids = os.getpid(), []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as fh:
                    if int(fh.read().rsplit(b")", 1)[1].split()[1]) == me:
                        kids.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    for pid in kids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    until = time.monotonic() + 0.2
    while kids and time.monotonic() < until:
        kids = [pid for pid in kids if _running(pid)]
        time.sleep(0.01)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False


def main(argv=None) -> int:
    from .fast_launch import parse_standalone, run_standalone

    raw = sys.argv[1:] if argv is None else list(argv)
    job = parse_standalone(raw)
    if job is not None:              # one host, --standalone: the ranks start without torch here
        _quiet_torchrun_logs()
        JobDeadline(job.script_args)
        return run_standalone(job, exit_status, failure_lines)
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    _quiet_torchrun_logs()

    args = parse_args(raw)
    JobDeadline(list(args.training_script_args))
    try:
        run(args)
    except ChildFailedError as exc:
        first_rank, _ = exc.get_first_failure()
        for line in failure_lines(exc.failures, first_rank):
            print(line, file=sys.stderr)
        return exit_status(exc.failures)
    except SignalException as exc:                 # the launcher itself got SIGTERM / SIGINT / ...
        return 128 + int(exc.sigval)
    return 0


if __name__ == "__main__":  # pragma: no cover
    from dtensor_verify.run_guard import flush_and_exit

    flush_and_exit(main())
