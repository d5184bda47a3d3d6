"""`benchmark`'s watchdog per instance (issue 21): a stuck instance costs its row, not the run.

An instance's pipeline checks its clock and ends by its limit, but one step can still run far
past it (a call that never reaches a check: ml4acopf's 300-bus prop2 ran one alpha-CROWN step
into the OOM killer). `dtensor-verify run` has a watchdog that ends the process (run_guard.py);
`benchmark` runs many instances in one process, and a watchdog there (or the shell's `timeout`
around it, as in bench/gpu/input_bab_gpu.sh) lost every later instance's row.

`InstanceWatch` is one daemon thread for the runner's life. The runner arms it for each instance
(`arm(inst, limit)`) and claims the instance's row when it ends (`claim()`). If the instance is
still running `grace` seconds past its limit, the thread claims the row itself, appends a
`timeout` row (message: the watchdog ended it; never a verdict), and re-executes the process
(`os.execv`, the same command line and process id, so a `timeout` / torchrun around it still
tracks it) with RESUME_ENV set: the new runner keeps the CSV's rows and goes on with the next
instances (`benchmark --resume`'s path). No thread can stop a step stuck in native code; `exec`
ends all of them at once, and the CSV's lock (flock, close-on-exec file) goes with them.

Each restart adds one row, so a run restarts at most once per instance. Under torchrun
(`--shard-instances`) a restarted rank does not join the process group again: it skips the start
barrier (the CSV is already there) and the ranks meet at the end through the CSV instead
(`wait_for_rows`: rank 0 waits until every instance has its row).
"""
from __future__ import annotations

import os
import sys
import threading
import time

RESUME_ENV = "DTENSOR_VERIFY_BENCH_RESUME"        # set on a re-executed runner: keep the CSV's rows
RESTARTS_ENV = "DTENSOR_VERIFY_BENCH_RESTARTS"    # how many times this run was re-executed
GRACE_S = 5.0            # a stuck instance is ended this long after its limit ...
GRACE_FRACTION = 0.1     # ... plus this fraction of the limit (a GPU's queued work, slow loads)
POLL_S = 0.1
EXIT_STUCK = 124         # as run_guard.EXIT_WATCHDOG, where the runner cannot be restarted


def restarted() -> bool:
    """Is this runner a re-execution after a stuck instance (keep the CSV, no process group)?"""
    return os.environ.get(RESUME_ENV) == "1"


def restarts() -> int:
    try:
        return int(os.environ.get(RESTARTS_ENV, "0"))
    except ValueError:
        return 0


def default_grace(limit_s: float) -> float:
    return GRACE_S + GRACE_FRACTION * max(limit_s, 0.0)


def restart_command() -> list[str]:
    """This process's command line, to run again (the interpreter's own options included)."""
    argv = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
    return [sys.executable, *argv[1:]]


def reexecute() -> None:
    """Replace this process by a new runner of the same command line, resuming (see the module
    docstring). Does not return."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    env = dict(os.environ, **{RESUME_ENV: "1", RESTARTS_ENV: str(restarts() + 1)})
    cmd = restart_command()
    os.execve(cmd[0], cmd, env)


class InstanceWatch:
    """See the module docstring. `write_row(inst, seconds, message)` appends the instance's
    `timeout` row; `restart()` re-executes (default `reexecute`); `grace_s` (None: by the limit,
    `default_grace`)."""

    def __init__(self, write_row, restart=reexecute, grace_s: float | None = None, say=None):
        self.write_row, self.restart, self.grace_s, self.say = write_row, restart, grace_s, say
        self._lock = threading.Lock()
        self._armed = None                # (instance, limit, started, fire_at)
        self._fired = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="dtensor-verify-bench-watch", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=2.0)
        return False

    def arm(self, inst, limit_s: float, started: float | None = None) -> None:
        """Watch `inst` from `started` (time.perf_counter(); default now) with its limit."""
        started = time.perf_counter() if started is None else started
        grace = default_grace(limit_s) if self.grace_s is None else self.grace_s
        with self._lock:
            self._armed = (inst, limit_s, started, started + max(limit_s, 0.0) + grace)

    def claim(self) -> bool:
        """The runner's claim on the armed instance's row: True when it may write it; False when
        the watchdog wrote it (the process is being re-executed: the runner writes nothing more
        and waits for that)."""
        with self._lock:
            self._armed = None
            if not self._fired:
                return True
        threading.Event().wait()          # the watchdog's exec ends this thread
        return False                      # pragma: no cover - not reached

    def _watch(self) -> None:
        while not self._stop.wait(POLL_S):
            with self._lock:
                armed = self._armed
                if armed is None or time.perf_counter() < armed[3]:
                    continue
                self._fired = True
            self._end(*armed[:3])
            return

    def _end(self, inst, limit_s: float, started: float) -> None:
        seconds = time.perf_counter() - started
        message = (f"the benchmark's watchdog ended this instance: still running {seconds:.1f} s after its start, "
                   f"past its limit of {limit_s:g} s (a step is stuck); the run resumes with the next instance")
        try:
            self.write_row(inst, seconds, message)
            if self.say is not None:
                self.say(inst, message)
        finally:
            try:
                self.restart()
            except OSError as exc:       # cannot re-execute: end the run as `run`'s watchdog would
                print(f"dtensor-verify: error: the benchmark's watchdog cannot restart the runner ({exc}); "
                      "the rows written so far stay, rerun with --resume", file=sys.stderr, flush=True)
                os._exit(EXIT_STUCK)


def wait_for_rows(read_keys, keys: list, budget_s: float, poll_s: float = 0.5) -> bool:
    """Wait (rank 0 under torchrun, at the end) until every key of `keys` has a row (`read_keys()`:
    the keys with rows now), or `budget_s` seconds passed; True when all are there."""
    end = time.monotonic() + budget_s
    want = set(keys)
    while True:
        if want <= set(read_keys()):
            return True
        if time.monotonic() >= end:
            return False
        time.sleep(poll_s)
