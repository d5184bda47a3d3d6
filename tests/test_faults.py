"""`dtensor-verify run` under torchrun when things go wrong, with wall-clock bounds.

Every run here is a real `torchrun --standalone` job of 2 ranks (a free port per job, so
xdist-safe) on mnist-net_256x2 (VNN-COMP 2022 mnist_fc), started either with plain torchrun
(`torch.distributed.run`) or with `dtensor_verify.launch` (torchrun that reports failures in
one line and exits with the ranks' status). Faults are injected from outside, at the moment
rank 0 announces verification ("... region(s) ..."), i.e. with the ranks inside collectives:

* a `spec` plan reaches the same verdict as one process (PGD's forward used to fail);
* a refused input (bad model, bad plan) gives one line (refused results paths: see
  test_results_file.py; the same code runs on every rank);
* a SIGKILLed rank: the run ends `error` at once (never `unsat`);
* a SIGSTOPped rank (rank 0 or 1) under `--timeout 20`: the whole job ends within 40 s of its
  start, with `timeout` in the results file (the acceptance bound);
* a SIGKILLed launcher: the ranks are gone within seconds, and claim no verdict;
* a SIGTERMed launcher: the ranks write `error` and the launcher exits 128 + 15.
"""
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

pytestmark = pytest.mark.distributed

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO.parent / "shared" / "benchmarks"
MNIST = "mnist_fc/onnx/mnist-net_256x2.onnx.gz"
UNSAT_PROP = "mnist_fc/vnnlib/prop_0_0.03.vnnlib.gz"      # unsat (CROWN), after a full PGD round
TORCHRUN = "torch.distributed.run"
LAUNCH = "dtensor_verify.launch"



def _env():
    return clean_env()


def _run_cmd(launcher, results, prop=UNSAT_PROP, timeout="60", plan="fsdp", extra=()):
    return [sys.executable, "-m", launcher, "--standalone", "--nproc-per-node", "2", "-m", "dtensor_verify",
            "--threads", "1", "run", "--onnx", bench(MNIST), "--vnnlib", bench(prop), "--results", str(results),
            "--timeout", timeout, "--plan", plan, *extra]


def _stat_fields(pid: int):
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()          # state, ppid, ...


def _alive(pid: int) -> bool:
    try:
        return _stat_fields(pid)[0] not in ("Z", "X")          # a zombie has ended
    except OSError:
        return False


class Job:
    """A torchrun job in the background: stderr collected by a thread, ranks found in /proc."""

    def __init__(self, cmd):
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.err: list[str] = []
        self.out: list[str] = []
        self.started = threading.Event()
        threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True).start()

    def _read(self, stream, into):
        for line in stream:
            into.append(line)
            if "region(s)" in line:
                self.started.set()

    def wait_started(self, limit=120.0):
        assert self.started.wait(limit), f"verification did not start:\n{self.stderr}"
        assert self.proc.poll() is None, f"the job ended before the fault:\n{self.stderr}"

    def ranks(self) -> dict[int, int]:
        """{rank: pid} of the launcher's worker processes."""
        out = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if int(_stat_fields(int(entry))[1]) != self.proc.pid:
                    continue
                with open(f"/proc/{entry}/environ", "rb") as fh:
                    env = dict(kv.split(b"=", 1) for kv in fh.read().split(b"\0") if b"=" in kv)
            except OSError:
                continue
            if b"RANK" in env:
                out[int(env[b"RANK"])] = int(entry)
        assert sorted(out) == [0, 1], out
        return out

    def wait(self, limit: float) -> int:
        try:
            return self.proc.wait(limit)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the job still runs {time.monotonic() - self.t0:.0f} s after its start:\n"
                                 f"{self.stderr}") from None

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.t0

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    def error_lines(self) -> list[str]:
        return [ln for ln in self.err if ln.startswith("dtensor-verify: error: ")]

    def cleanup(self, pids=()):
        """Nothing outlives a test: SIGKILL the launcher and any rank still there."""
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


def _verdict(path: Path) -> str | None:
    return path.read_text().splitlines()[0] if path.exists() else None


def _one_process_verdict(results, prop):
    """The verdict of the same instance in this process (no second interpreter to start)."""
    import torch

    from dtensor_verify.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = main(["run", "--onnx", bench(MNIST), "--vnnlib", bench(prop), "--results", str(results),
                     "--timeout", "60", "--quiet"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    return _verdict(results)


# ------------------------------------------------------------------------------ spec plans

def test_spec_plan_gives_the_one_process_verdict(tmp_path):
    """The unsat instance runs a full PGD round (the network's forward under `spec`, whose no-grad
    steps stream the weights) and then CROWN under `spec`."""
    prop, plan = UNSAT_PROP, "spec"
    ref = _one_process_verdict(tmp_path / "one.txt", prop)
    assert ref in ("sat", "unsat"), ref
    res = tmp_path / "two.txt"
    proc = subprocess.run(_run_cmd(TORCHRUN, res, prop=prop, plan=plan, extra=["--quiet"]), cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert _verdict(res) == ref, proc.stderr[-4000:]
    assert proc.stdout.strip().splitlines()[-1] == ref


# ------------------------------------------------------------------------------ refusals

def _bad_input(kind, tmp_path):
    """(extra run arguments or a replacement model, the text the error line must name)."""
    if kind == "bad-model":
        bad = tmp_path / "cut.onnx"
        bad.write_bytes(Path(bench(MNIST)).read_bytes()[:300])
        return {"onnx": str(bad)}, "cut.onnx"
    if kind == "bad-plan":
        return {"plan": "NoSuchLayer=tp"}, "NoSuchLayer"
    raise ValueError(kind)


def _with(cmd, **repl):
    cmd = list(cmd)
    for opt, value in repl.items():
        cmd[cmd.index(f"--{opt}") + 1] = value
    return cmd


def test_refused_plan_under_the_launcher_is_one_line_and_exit_2(tmp_path):
    res = tmp_path / "r.txt"
    res.write_text("unsat\n")
    repl, needle = _bad_input("bad-plan", tmp_path)
    proc = subprocess.run(_with(_run_cmd(LAUNCH, res), **repl), cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=300)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("dtensor-verify: error: ") and needle in lines[0], proc.stderr
    assert _verdict(res) == "error"


def test_refused_input_under_plain_torchrun_is_printed_once(tmp_path):
    """Plain torchrun adds its own ChildFailedError report (and exits 1): that cannot be
    changed from inside the ranks, but the error itself is printed once, by rank 0."""
    res = tmp_path / "r.txt"
    res.write_text("unsat\n")
    repl, needle = _bad_input("bad-model", tmp_path)
    proc = subprocess.run(_with(_run_cmd(TORCHRUN, res), **repl), cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=300)
    ours = [ln for ln in proc.stderr.splitlines() if ln.startswith("dtensor-verify: error: ")]
    assert proc.returncode != 0
    assert len(ours) == 1 and needle in ours[0], proc.stderr
    assert "dtensor_verify/" not in proc.stderr, proc.stderr      # no traceback from our code
    assert _verdict(res) == "error"


# ------------------------------------------------------------------------------ faults

# One victim each in the default run (a non-zero rank killed, rank 0 stopped); the other under -m slow.
@pytest.mark.parametrize("victim", [pytest.param(0, marks=pytest.mark.slow), 1])
def test_killed_rank_ends_the_run_as_error_at_once(victim, tmp_path):
    res = tmp_path / "r.txt"
    res.write_text("unsat\n")
    job = Job(_run_cmd(LAUNCH, res))
    ranks = {}
    try:
        job.wait_started()
        ranks = job.ranks()
        t_kill = time.monotonic()
        os.kill(ranks[victim], signal.SIGKILL)
        code = job.wait(30)
        after = time.monotonic() - t_kill
    finally:
        job.cleanup(ranks.values())
    assert code == 2, (code, job.stderr)
    assert after < 15, f"the job took {after:.1f} s to end after the kill"
    assert _verdict(res) == "error", job.stderr
    assert any(f"rank {victim} (pid {ranks[victim]}) was killed by SIGKILL" in ln for ln in job.err), job.stderr
    assert "Traceback" not in job.stderr, job.stderr
    assert not any(_alive(pid) for pid in ranks.values())


@pytest.mark.parametrize("victim", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_stopped_rank_ends_the_whole_run_within_40_s(victim, tmp_path):
    """The acceptance bound, with plain torchrun: SIGSTOP one rank of a `--timeout 20` run. The
    other rank's watchdog writes `timeout`, SIGKILLs the stopped rank and leaves (exit 124)."""
    res = tmp_path / "r.txt"
    res.write_text("unsat\n")
    job = Job(_run_cmd(TORCHRUN, res, timeout="20"))
    ranks = {}
    try:
        job.wait_started()
        ranks = job.ranks()
        os.kill(ranks[victim], signal.SIGSTOP)
        job.wait(max(45 - job.seconds, 1))
        total = job.seconds
    finally:
        job.cleanup(ranks.values())
    assert total < 40, f"the job ended {total:.1f} s after its start"
    assert _verdict(res) == "timeout", job.stderr
    survivor = 1 - victim
    watchdog = [ln for ln in job.error_lines() if "watchdog" in ln]
    assert len(watchdog) == 1 and f"rank {survivor}:" in watchdog[0], job.stderr
    assert not any(_alive(pid) for pid in ranks.values())


def test_killed_launcher_takes_the_ranks_with_it(tmp_path):
    res = tmp_path / "r.txt"
    res.write_text("unsat\n")
    job = Job(_run_cmd(TORCHRUN, res))
    ranks = {}
    try:
        job.wait_started()
        ranks = job.ranks()
        job.proc.kill()                             # SIGKILL: torchrun cannot pass anything on
        t_kill = time.monotonic()
        while any(_alive(pid) for pid in ranks.values()) and time.monotonic() - t_kill < 20:
            time.sleep(0.05)
        gone_after = time.monotonic() - t_kill
    finally:
        job.cleanup(ranks.values())
    assert gone_after < 5, f"ranks still alive {gone_after:.1f} s after the launcher died"
    assert _verdict(res) is None, "ranks orphaned by the launcher wrote a result"


def test_terminated_launcher_leaves_error(tmp_path):
    res = tmp_path / "r.txt"
    res.write_text("unsat\n")
    job = Job(_run_cmd(LAUNCH, res))
    ranks = {}
    try:
        job.wait_started()
        ranks = job.ranks()
        job.proc.send_signal(signal.SIGTERM)
        code = job.wait(30)
    finally:
        job.cleanup(ranks.values())
    assert code == 128 + signal.SIGTERM, (code, job.stderr)
    assert _verdict(res) == "error", job.stderr
    assert not any(_alive(pid) for pid in ranks.values())


# ------------------------------------------------------------------------------ launcher status

def test_launcher_exit_status_and_lines():
    """How dtensor_verify.launch turns torchrun's per-rank failures into one status and lines."""
    from types import SimpleNamespace as F

    from dtensor_verify.launch import exit_status, failure_lines

    watchdog = {0: F(exitcode=124, pid=10), 1: F(exitcode=-9, pid=11)}
    assert exit_status(watchdog) == 124
    assert failure_lines(watchdog, first_rank=0) == ["dtensor-verify: error: rank 1 (pid 11) was killed by SIGKILL"]
    killed = {1: F(exitcode=-9, pid=11), 0: F(exitcode=-15, pid=10)}           # torchrun's clean-up SIGTERM
    assert exit_status(killed) == 2
    assert failure_lines(killed, first_rank=1) == ["dtensor-verify: error: rank 1 (pid 11) was killed by SIGKILL"]
    refused = {0: F(exitcode=2, pid=10), 1: F(exitcode=143, pid=11)}
    assert exit_status(refused) == 2 and failure_lines(refused, first_rank=0) == []
    assert exit_status({1: F(exitcode=2, pid=11)}) == 0                          # rank 0 gave its verdict
