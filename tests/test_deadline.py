"""One deadline for the whole job (issue 18, item 3): `--timeout T` counts from the start of the
job (the launcher's start under `dtensor_verify.launch`) and the launcher's process is gone by
T + 0.5 s, measured from outside: one process, P = 2 and P = 4, with and without a SIGSTOPped
rank. A verdict that would come late is written as `timeout`.

The instance (mnist-net_256x6, prop_1 eps 0.05) is not decided in these limits, so every run
ends at its limit. The multi-process runs are `slow` (each costs P x T seconds of CPU); the
default run keeps the one-process checks."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from proc_env import bench, clean_env

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO.parent / "shared" / "benchmarks"
MODEL = "mnist_fc/onnx/mnist-net_256x6.onnx.gz"
PROP = "mnist_fc/vnnlib/prop_1_0.05.vnnlib.gz"
SLACK = 0.5                 # the acceptance bound: gone by T + 0.5 s



def _env():
    return clean_env()


def _run_args(results, timeout, plan=None):
    return ["--threads", "1", "run", "--onnx", bench(MODEL), "--vnnlib", bench(PROP), "--results", str(results),
            "--timeout", str(timeout), *(["--plan", plan] if plan else [])]


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return out


def _timed(cmd, limit: float, stop_rank: int | None = None):
    """Run `cmd`; returns (seconds from start to exit, exit status, stderr). With `stop_rank`,
    SIGSTOP that rank (the launcher's n-th child by RANK) once verification has started."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err, started = [], threading.Event()

    def read():
        for line in proc.stderr:
            err.append(line)
            if "region(s)" in line:
                started.set()
    threading.Thread(target=read, daemon=True).start()
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    stopped = []
    try:
        if stop_rank is not None:
            assert started.wait(limit), "".join(err)
            for pid in _children(proc.pid):
                with open(f"/proc/{pid}/environ", "rb") as fh:
                    env = dict(kv.split(b"=", 1) for kv in fh.read().split(b"\0") if b"=" in kv)
                if env.get(b"RANK") == str(stop_rank).encode():
                    os.kill(pid, signal.SIGSTOP)
                    stopped.append(pid)
            assert stopped, "".join(err)
        try:
            code = proc.wait(limit + 30)
        except subprocess.TimeoutExpired:
            code = None
        wall = time.monotonic() - t0
    finally:
        for pid in _children(proc.pid) + stopped:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    return wall, code, "".join(err)


def _check(res: Path, wall: float, code, err: str, T: float):
    assert code is not None, f"still running {T + 30} s after its start:\n{err[-3000:]}"
    assert wall <= T + SLACK, f"the job ended {wall - T:+.2f} s after its limit of {T} s:\n{err[-3000:]}"
    assert res.read_text().splitlines()[0] in ("timeout", "unknown", "sat", "unsat"), err[-3000:]
    assert "Traceback" not in err, err[-3000:]


@pytest.mark.slow
def test_one_process_ends_by_its_limit(tmp_path):
    res = tmp_path / "r.txt"
    T = 20.0
    wall, code, err = _timed([sys.executable, "-m", "dtensor_verify", *_run_args(res, T)], T)
    _check(res, wall, code, err, T)
    assert res.read_text() == "timeout\n"


HANG = """
import sys, time
from dtensor_verify.verify.instance import Clock
Clock.check = lambda self: time.sleep(3600)     # a step that never returns
from dtensor_verify.cli import main
sys.exit(main())
"""


def test_a_stuck_one_process_run_ends_by_its_limit(tmp_path):
    res = tmp_path / "r.txt"
    T = 12.0
    wall, code, err = _timed([sys.executable, "-c", HANG, *_run_args(res, T)], T)
    _check(res, wall, code, err, T)
    assert code == 124 and res.read_text() == "timeout\n", err


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("nproc, stop_rank", [(2, None), (2, 0), (2, 1), (4, None), (4, 2)])
def test_launcher_ends_by_its_limit(tmp_path, nproc, stop_rank):
    res = tmp_path / "r.txt"
    res.write_text("unsat\n")
    T = 30.0 if nproc == 2 else 45.0
    cmd = [sys.executable, "-m", "dtensor_verify.launch", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "dtensor_verify", *_run_args(res, T, plan="fsdp")]
    wall, code, err = _timed(cmd, T, stop_rank)
    _check(res, wall, code, err, T)
    assert res.read_text() == "timeout\n", err[-3000:]
    assert code in (0, 124), (code, err[-3000:])      # 0: rank 0 wrote `timeout` itself


def test_a_late_verdict_is_written_as_timeout(tmp_path, monkeypatch):
    """A verdict that comes after the limit (here: the clock says the limit passed while the
    pipeline returns `unsat`) is written as `timeout`."""
    import dtensor_verify.cli as cli
    import dtensor_verify.verify as verify
    from dtensor_verify.verify import VerifyResult

    def late(*a, **k):
        time.sleep(1.2)
        return VerifyResult("unsat", None, 1.2)
    monkeypatch.setattr(verify, "verify_instance", late)
    monkeypatch.setattr("dtensor_verify.run_guard.VERIFY_RESERVE_S", 0.0)
    monkeypatch.setattr("dtensor_verify.run_guard.WATCHDOG_GRACE_S", 30.0)    # not this process's end
    res = tmp_path / "r.txt"
    spec = bench("test/test_prop.vnnlib")
    code = cli.main(["run", "--onnx", bench("test/test_sat.onnx"), "--vnnlib", spec, "--results", str(res),
                     "--timeout", "1", "--quiet"])
    assert res.read_text() == "timeout\n" and code == 0
