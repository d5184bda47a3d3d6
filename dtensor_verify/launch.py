"""`torchrun` that reports a failed run in one line and exits with the ranks' own status.

    python -m dtensor_verify.launch --standalone --nproc-per-node 2 -m dtensor_verify run ...

Takes exactly torchrun's arguments (it runs `torch.distributed.run` in-process). Plain
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


def main(argv=None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    _quiet_torchrun_logs()

    args = parse_args(sys.argv[1:] if argv is None else argv)
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
    sys.exit(main())
