"""What keeps `dtensor-verify run` honest when things go wrong.

`ResultsFile` is the run's VNN-COMP results file through its life:

1. checked before any work (`check_result_path`: no symlink, device, directory, missing dir);
2. reset: an earlier run's file is removed, so from then on a reader finds no file rather than
   an old `sat` / `unsat` (every rank does this: if rank 0 hangs before its own reset, a stale
   verdict still cannot survive);
3. written once at the end, atomically (temp file + rename). Rank 0 writes the verdict and may
   replace what is there; the other ranks only ever write `error` / `timeout`, and only where no
   file exists yet (atomic create), so they can never hide rank 0's verdict.

`Watchdog` is a daemon thread that ends the process when the cooperative path cannot:

* time limit: `grace` seconds after the deadline (one more second on ranks other than 0, so a
  live rank 0 acts first) it writes `timeout` (never `sat` / `unsat`), SIGKILLs the other
  ranks of this torchrun job on this host (a stopped or wedged rank would otherwise keep the
  job alive: torchrun gives a rank that ignores SIGTERM 30 s before killing it) and leaves
  with `os._exit`, which no stuck collective can block;
* SIGTERM under torchrun (torchrun's way of stopping the other ranks when one fails, or of
  passing on its own SIGTERM): writes `error` (`timeout` past the deadline) and leaves. The
  signal is seen through `signal.set_wakeup_fd`, so it is handled even while the main thread
  is blocked inside a collective, where Python signal handlers cannot run;
* launcher death under torchrun (our parent process changes): leaves at once without writing
  anything, since whoever killed the launcher no longer waits for this run's verdict.
"""
from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time

PROG = "dtensor-verify"
# One deadline for the whole job (issue 18): `--timeout T` counts from the start of the job (the
# launcher's start under `dtensor_verify.launch`, which passes it in JOB_START_ENV; else this
# process's start) and the job, launcher included, must be gone by T. Reserves, in seconds
# before T (measured on a loaded 2-core machine: writing + exit ~0.1 s for one process; under
# torchrun the rank's exit, torchrun's 0.1 s monitor and its own exit add ~0.5 s):
VERIFY_RESERVE_S = 0.5           # one process: verification stops this long before T
VERIFY_RESERVE_TORCHRUN_S = 1.5  # under torchrun
WATCHDOG_GRACE_S = -0.25         # the watchdog ends a stuck one-process run at T - 0.25 s
WATCHDOG_GRACE_TORCHRUN_S = -0.8  # ... a stuck rank 0 at T - 0.8 s under torchrun
PEER_EXTRA_GRACE_S = 0.2         # ranks other than 0 wait this much longer: a live rank 0 goes first
LAUNCHER_RESERVE_S = 0.3         # the launcher kills what is left at T - 0.3 s (then writes `timeout`)
JOB_START_ENV = "DTENSOR_VERIFY_JOB_START"    # the job's start, as time.time(), set by the launcher
POLL_S = 0.05                    # how often the watchdog looks at the clock and the parent process
EXIT_WATCHDOG = 124          # like coreutils' timeout(1): the limit had to be enforced
EXIT_TERMINATED = 128 + signal.SIGTERM
EXIT_ORPHANED = 1


def torchrun_rank() -> int | None:
    """This process's rank when started by torchrun (or another env:// launcher), else None."""
    if "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return int(os.environ["RANK"])
    return None


def job_age_s() -> float | None:
    """Seconds since the job's launcher started (JOB_START_ENV, under dtensor_verify.launch),
    or None when no launcher said."""
    raw = os.environ.get(JOB_START_ENV)
    if raw is None or torchrun_rank() is None:
        return None
    try:
        return max(time.time() - float(raw), 0.0)
    except ValueError:
        return None


def verify_reserve_s(torchrun: bool) -> float:
    """How long before the time limit verification must stop, so the job is gone by it."""
    return VERIFY_RESERVE_TORCHRUN_S if torchrun else VERIFY_RESERVE_S


def process_age_s() -> float:
    """Seconds since this process started (Linux /proc; 0.0 where that cannot be read). A time
    limit given on the command line counts from here, as the harness that started us counts."""
    try:
        with open("/proc/self/stat", "rb") as fh:
            start_ticks = int(fh.read().rsplit(b")", 1)[1].split()[19])    # field 22: starttime
        with open("/proc/uptime", "rb") as fh:
            uptime = float(fh.read().split()[0])
        return max(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError):
        return 0.0


def _same_file(a: str, b: str) -> bool:
    """Do paths `a` and `b` name the same file: equal after resolving links (either may not
    exist yet), or the same inode (hard links, bind mounts) where both exist."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def input_candidates(flag: str, path) -> list[tuple[str, str]]:
    """The files an input option may read: the path, and `path.gz` where the reader falls back
    to it (`--vnnlib x.vnnlib` reads `x.vnnlib.gz` when only that exists)."""
    if path is None:
        return []
    path = os.fspath(path)
    out = [(flag, path)]
    if not path.endswith(".gz") and not os.path.exists(path):
        out.append((flag, path + ".gz"))
    return out


def refuse_overlaps(outputs: dict, inputs: list) -> None:
    """Refuse (OutputFileError, one line) an output path that names an input file or another
    output, before anything is read or written. `outputs`: {option: path or None}; `inputs`:
    [(option, path or None)] of everything the command reads. An input is never written: a
    results file naming the model would be removed by the reset before the model is read."""
    from .errors import OutputFileError

    outs = [(flag, os.fspath(p)) for flag, p in outputs.items() if p is not None]
    ins = [(flag, os.fspath(p)) for flag, p in inputs if p is not None]
    for i, (oflag, opath) in enumerate(outs):
        for iflag, ipath in ins:
            if _same_file(opath, ipath):
                raise OutputFileError(
                    f"{oflag} {_short(opath)} is the input file of {iflag} ({_short(ipath)}); inputs are "
                    f"never written: give {oflag} another path")
        for oflag2, opath2 in outs[i + 1:]:
            if _same_file(opath, opath2):
                raise OutputFileError(f"{oflag} and {oflag2} name the same file ({_short(opath)}); "
                                      f"give them different paths")


def _short(text: str, limit: int = 200) -> str:
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _say(msg: str) -> None:
    try:
        print(f"{PROG}: error: {msg}", file=sys.stderr, flush=True)
    except (OSError, ValueError):      # stderr closed (e.g. its reader, the launcher, is gone)
        pass


class ResultsFile:
    """The results file of one run (see the module docstring). Thread-safe: the main thread and
    the watchdog may race to write it; the first verdict written by the main thread wins."""

    def __init__(self, path, rank: int = 0, torchrun: bool = False):
        from .specs import check_result_path

        self.path = check_result_path(path)     # raises OutputFileError (one line, exit 2)
        self.rank = rank
        self.final: str | None = None           # the verdict this process wrote at the end
        self._lock = threading.Lock()
        # Under torchrun, once the launcher is gone nobody waits for this run: write nothing
        # (a harness that killed it may already have written its own result there).
        self._launcher = os.getppid() if torchrun else None

    def _orphaned(self) -> bool:
        return self._launcher is not None and os.getppid() != self._launcher

    def reset(self) -> None:
        from .specs import remove_result_file

        remove_result_file(self.path)

    def write_verdict(self, verdict: str, x=None, y=None) -> None:
        """The run's verdict (rank 0), or `error` from any rank; raises OSError if it cannot."""
        from .specs import write_result_file

        with self._lock:
            if not self._orphaned():
                write_result_file(self.path, verdict, x, y, only_if_absent=self.rank != 0)
            self.final = verdict

    def write_fallback(self, verdict: str) -> bool:
        """`error` / `timeout` when the run is ended from outside its normal path; nothing if
        this process already wrote its verdict. Never raises (the caller is about to exit)."""
        from .specs import write_result_file

        assert verdict in ("error", "timeout"), verdict
        with self._lock:
            if self.final is not None or self._orphaned():
                return False
            try:
                written = write_result_file(self.path, verdict, only_if_absent=self.rank != 0)
            except Exception as exc:   # noqa: BLE001 - reported, and the process ends anyway
                _say(f"{self.path}: cannot write the results file: {exc}")
                return False
            if written:
                self.final = verdict
            return written


class Watchdog:
    """See the module docstring. Use as a context manager around the run:

        with Watchdog(timeout_s, results, rank=rank, torchrun=rank is not None):
            ...
    """

    def __init__(self, timeout_s: float, results: ResultsFile | None, rank: int = 0,
                 torchrun: bool = False, used_s: float = 0.0, grace_s: float | None = None,
                 poll_s: float = POLL_S):
        """`used_s`: seconds of the time limit already spent (e.g. on start-up) before now.
        `grace_s`: when past the limit a stuck run is ended (negative: before it, so that the
        whole job is gone by the limit; default by `torchrun`)."""
        if grace_s is None:
            grace_s = WATCHDOG_GRACE_TORCHRUN_S if torchrun else WATCHDOG_GRACE_S
        self.timeout_s = timeout_s
        self.results = results
        self.rank = rank
        self.torchrun = torchrun
        self.poll_s = poll_s
        self.deadline = time.monotonic() - used_s + timeout_s
        self.fire_at = self.deadline + grace_s + (PEER_EXTRA_GRACE_S if rank else 0.0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pipe: tuple[int, int] | None = None
        self._saved_signal = None
        self._parent = os.getppid()

    # -- life cycle -------------------------------------------------------------------------
    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def start(self) -> None:
        if self.torchrun and threading.current_thread() is threading.main_thread():
            self._catch_sigterm()
        self._thread = threading.Thread(target=self._watch, name="dtensor-verify-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._pipe is not None:
            _poke(self._pipe[1])
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        self._release_sigterm()

    # -- SIGTERM: a wake-up byte on a pipe, read by the watchdog thread ----------------------
    def _catch_sigterm(self) -> None:
        r, w = os.pipe()
        os.set_blocking(w, False)
        self._pipe = (r, w)
        # A Python-level handler is needed for the C handler to write to the wake-up fd; the
        # work itself happens in the watchdog thread.
        self._saved_signal = (signal.signal(signal.SIGTERM, lambda signum, frame: None),
                              signal.set_wakeup_fd(w, warn_on_full_buffer=False))

    def _release_sigterm(self) -> None:
        if self._saved_signal is not None and threading.current_thread() is threading.main_thread():
            handler, fd = self._saved_signal
            signal.set_wakeup_fd(fd)
            signal.signal(signal.SIGTERM, handler)
            self._saved_signal = None
        if self._pipe is not None and self._saved_signal is None:
            for fd in self._pipe:
                os.close(fd)
            self._pipe = None

    def _wait(self) -> bytes:
        """Sleep one poll interval; return the signal numbers that arrived meanwhile."""
        wait = max(min(self.poll_s, self.fire_at - time.monotonic()), 0.0)
        if self._pipe is None:
            self._stop.wait(wait)
            return b""
        ready, _, _ = select.select([self._pipe[0]], [], [], wait)
        if not ready:
            return b""
        try:
            return os.read(self._pipe[0], 64)
        except BlockingIOError:
            return b""

    # -- the watch ----------------------------------------------------------------------------
    def _watch(self) -> None:
        while not self._stop.is_set():
            arrived = self._wait()
            if self._stop.is_set():
                return
            if bytes([signal.SIGTERM]) in arrived:
                self._end_terminated()
            if self.torchrun and os.getppid() != self._parent:
                os._exit(EXIT_ORPHANED)      # the launcher is gone: claim nothing, write nothing
            if time.monotonic() >= self.fire_at:
                self._end_expired()

    def _verdict_already_written(self) -> str | None:
        """The verdict this process wrote before the watchdog acted (it is then only stuck on its
        way out, e.g. in the JSON's memory report): the watchdog leaves it as it is."""
        return None if self.results is None else self.results.final

    def _end_terminated(self) -> None:
        done = self._verdict_already_written()
        if done is not None:
            flush_and_exit(_exit_status_for(done))
        verdict = "timeout" if time.monotonic() >= self.deadline else "error"
        if self.results is not None:
            self.results.write_fallback(verdict)
        if self.rank == 0:
            _say(f"stopped by SIGTERM (a rank failed, or the launcher was stopped); results file: {verdict}")
        flush_and_exit(EXIT_TERMINATED)

    def _end_expired(self) -> None:
        who = f"rank {self.rank}: " if self.torchrun else ""
        late = f"{who}still running at the time limit of {self.timeout_s:g} s (less the time to end the job)"
        done = self._verdict_already_written()
        if done is not None:
            _say(f"{late}, after writing its verdict '{done}'; the watchdog ends the process")
            code = _exit_status_for(done)
        else:
            written = self.results is not None and self.results.write_fallback("timeout")
            where = "results file: timeout" if written else "the results file was written by rank 0"
            stuck = "a rank is stuck" if self.torchrun else "a step is stuck"
            _say(f"{late} ({stuck}); the watchdog ends the run, {where}")
            code = EXIT_WATCHDOG
        if self.torchrun:
            kill_local_peers()
        flush_and_exit(code)


def _exit_status_for(verdict: str) -> int:
    return 2 if verdict == "error" else 0


def _poke(fd: int) -> None:
    try:
        os.write(fd, b"\0")
    except OSError:
        pass


def flush_and_exit(code: int) -> None:
    """Flush stdout / stderr and leave without the interpreter's clean-up (torchrun's took 2-3 s
    on a busy machine, and the job must be gone by its time limit)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


# ------------------------------------------------------------------------------ peers

def local_peer_pids() -> list[int]:
    """The other ranks of this torchrun job on this host: our parent's other children that carry
    the same TORCHELASTIC_RUN_ID (Linux /proc; an empty list elsewhere or outside torchrun)."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    parent = os.getppid()
    if not run_id or parent <= 1 or not os.path.isdir("/proc"):
        return []
    me, found = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
            if int(fields[1]) != parent:          # fields: state, ppid, ...
                continue
            with open(f"/proc/{entry}/environ", "rb") as fh:
                env = fh.read().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if f"TORCHELASTIC_RUN_ID={run_id}".encode() in env:
            found.append(int(entry))
    return found


def kill_local_peers() -> None:
    for pid in local_peer_pids():
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
