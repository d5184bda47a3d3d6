"""`dtensor_verify.launch --standalone` on one host without importing torch (issue 18: start-up).

torchrun (`torch.distributed.run`) imports all of torch before it starts a rank: 1.5 s on an idle
machine, 5-6 s at load average 10 on two cores, serial time before the ranks' own imports begin
(docs/TRUST.md, "A rank's start-up"). For the single-host `--standalone` case this module starts
the ranks itself, with the environment torchrun gives them (RANK, LOCAL_RANK, WORLD_SIZE,
LOCAL_WORLD_SIZE, GROUP_RANK, ROLE_*, MASTER_ADDR / MASTER_PORT for the env:// rendezvous, the
port held by the launcher (reserve_port), a TORCHELASTIC_RUN_ID, OMP_NUM_THREADS=1 unless set;
each rank in a session of its own), and keeps torchrun's failure rules: when a rank exits
non-zero the others get SIGTERM (SIGKILL 30 s later); every rank that exited non-zero is a
failure, the first one by time is "first"; a SIGTERM / SIGINT / SIGHUP / SIGQUIT to the
launcher is passed to the ranks, and the launcher exits 128 + N once they are gone.

Only `--standalone`, `--nproc-per-node N` (or `--nproc_per_node`), `--nnodes 1` and `-m MODULE` /
a script are taken; any other torchrun option, or DTENSOR_VERIFY_LAUNCHER=torchrun, leaves the
job to torchrun itself (`launch.main`).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field

LAUNCHER_ENV = "DTENSOR_VERIFY_LAUNCHER"      # "torchrun": always torch.distributed.run
CLOSE_GRACE_S = 30.0                           # torchrun's SIGTERM -> SIGKILL wait
POLL_S = 0.02
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


@dataclass(frozen=True)
class StandaloneJob:
    """What the launcher's command line asks for, when this module can run it."""
    nproc: int
    entry: list[str]               # after the interpreter: ["-m", module] or ["-u", script]
    script_args: list[str]


@dataclass
class RankFailure:
    """One rank that exited non-zero (the fields launch.exit_status / failure_lines read)."""
    exitcode: int                  # negative: killed by that signal
    pid: int
    timestamp: float = field(default_factory=time.time)


def _int_option(value: str) -> int | None:
    try:
        n = int(value)
    except ValueError:
        return None
    return n if n >= 1 else None


def parse_standalone(argv: list[str]) -> StandaloneJob | None:
    """The job when `argv` (the launcher's arguments) is a plain single-host standalone run this
    module can start; None for anything else (torchrun then parses and runs it)."""
    if os.environ.get(LAUNCHER_ENV, "").lower() == "torchrun":
        return None
    nproc, standalone, i = None, False, 0
    while i < len(argv):
        arg = argv[i]
        name, eq, inline = arg.partition("=")
        if arg == "--standalone":
            standalone = True
        elif name in ("--nproc-per-node", "--nproc_per_node", "--nnodes"):
            value = inline if eq else (argv[i + 1] if i + 1 < len(argv) else "")
            i += 0 if eq else 1
            n = _int_option(value) if name != "--nnodes" else (1 if value in ("1", "1:1") else None)
            if n is None:
                return None
            nproc = n if name != "--nnodes" else nproc
        elif arg == "-m" and i + 1 < len(argv):
            entry, rest = ["-m", argv[i + 1]], argv[i + 2:]
            break
        elif not arg.startswith("-"):
            entry, rest = ["-u", arg], argv[i + 1:]
            break
        else:
            return None                              # any other torchrun option: torchrun
        i += 1
    else:
        return None
    if not standalone or nproc is None:
        return None
    return StandaloneJob(nproc, entry, list(rest))


def reserve_port() -> tuple[socket.socket, int]:
    """A port for rank 0's rendezvous store, held for the job: a bound, never listening socket
    with SO_REUSEADDR. Rank 0's TCPStore (SO_REUSEADDR too) can still listen on it, while the
    kernel hands it to no other bind(0) (other jobs' launchers, gloo's own listeners), so jobs
    started side by side cannot pick the same port between the choice and rank 0's bind."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 0))
    return s, s.getsockname()[1]


def rank_env(rank: int, nproc: int, port: int, run_id: str, base: dict | None = None) -> dict:
    """A rank's environment, as torchrun --standalone sets it on one host."""
    env = dict(os.environ if base is None else base)
    env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_WORLD_SIZE=str(nproc),
               GROUP_RANK="0", GROUP_WORLD_SIZE="1", ROLE_RANK=str(rank), ROLE_WORLD_SIZE=str(nproc),
               ROLE_NAME="default", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), TORCHELASTIC_RUN_ID=run_id,
               TORCHELASTIC_RESTART_COUNT="0", TORCHELASTIC_MAX_RESTARTS="0",
               TORCHELASTIC_USE_AGENT_STORE="False")
    env.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    if nproc > 1:
        env.setdefault("OMP_NUM_THREADS", "1")
    return env


class _Ranks:
    """The started ranks, polled until all are done or one failed."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []
        self.failures: dict[int, RankFailure] = {}

    def start(self, job: StandaloneJob) -> None:
        self.port_hold, port = reserve_port()          # closed when the launcher exits
        run_id = f"dtv-{uuid.uuid4().hex[:12]}"
        # Each rank in a session of its own, as torchrun starts them: with the kernel's
        # autogroup scheduling, a session is one CPU share on a busy machine.
        for r in range(job.nproc):
            self.procs.append(subprocess.Popen([sys.executable, *job.entry, *job.script_args],
                                               env=rank_env(r, job.nproc, port, run_id), start_new_session=True))

    def _sweep(self) -> bool:
        """Record newly failed ranks; True while some rank still runs."""
        running = False
        for rank, p in enumerate(self.procs):
            code = p.poll()
            if code is None:
                running = True
            elif code != 0 and rank not in self.failures:
                self.failures[rank] = RankFailure(code, p.pid)
        return running

    def wait(self) -> None:
        while self._sweep() and not self.failures:
            time.sleep(POLL_S)
        self.close(signal.SIGTERM)
        self._sweep()

    def close(self, sig: int) -> None:
        """Send `sig` to the ranks still running; SIGKILL those left after CLOSE_GRACE_S."""
        for p in self.procs:
            if p.poll() is None:
                try:
                    p.send_signal(sig)
                except OSError:
                    pass
        until = time.monotonic() + CLOSE_GRACE_S
        while any(p.poll() is None for p in self.procs) and time.monotonic() < until:
            time.sleep(POLL_S)
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


class _LauncherSignal(Exception):
    def __init__(self, sig: int):
        super().__init__(sig)
        self.sig = sig


def _raise_signal(sig, _frame):
    raise _LauncherSignal(sig)


def run_standalone(job: StandaloneJob, exit_status, failure_lines) -> int:
    """Start the ranks, wait, and return the launcher's status (launch.exit_status's rules)."""
    previous = {s: signal.signal(s, _raise_signal) for s in FORWARDED}
    ranks = _Ranks()
    try:
        ranks.start(job)
        ranks.wait()
    except _LauncherSignal as exc:
        for s in FORWARDED:
            signal.signal(s, signal.SIG_IGN)
        ranks.close(exc.sig)                        # the ranks started so far
        return 128 + int(exc.sig)
    finally:
        for s, handler in previous.items():
            if signal.getsignal(s) is _raise_signal:
                signal.signal(s, handler)
    if not ranks.failures:
        return 0
    first = min(ranks.failures, key=lambda r: ranks.failures[r].timestamp)
    for line in failure_lines(ranks.failures, first):
        print(line, file=sys.stderr)
    return exit_status(ranks.failures)
