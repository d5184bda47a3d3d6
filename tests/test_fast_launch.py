"""dtensor_verify.launch's single-host `--standalone` path (fast_launch.py): the ranks start
without torch in the launcher, with torchrun's environment and failure rules. The ranks here are
tiny torch-free scripts, so these run in about a second each."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from proc_env import clean_env

from dtensor_verify.fast_launch import LAUNCHER_ENV, StandaloneJob, parse_standalone, rank_env, reserve_port

REPO = Path(__file__).resolve().parents[1]

RANK_SCRIPT = """
import os, sys, time, json
rank = int(os.environ["RANK"])
keys = ["RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
        "TORCHELASTIC_RUN_ID", "OMP_NUM_THREADS"]
with open(os.path.join(sys.argv[1], f"env{rank}.json"), "w") as fh:
    json.dump({k: os.environ.get(k) for k in keys} | {"ppid": os.getppid(), "pid": os.getpid(),
                                                        "sid": os.getsid(0)}, fh)
mode = sys.argv[2]
if mode == "fail1" and rank == 1:
    sys.exit(3)
if mode in ("fail1", "sleep"):
    time.sleep(60)
if mode == "rank0-verdict" and rank == 1:
    time.sleep(0.5)
    sys.exit(2)
print(f"rank {rank} done", flush=True)
"""


def test_parse_standalone_takes_only_the_plain_single_host_form(monkeypatch):
    monkeypatch.delenv(LAUNCHER_ENV, raising=False)
    job = parse_standalone(["--standalone", "--nproc-per-node", "2", "-m", "dtensor_verify", "run", "--x", "1"])
    assert job == StandaloneJob(2, ["-m", "dtensor_verify"], ["run", "--x", "1"])
    assert parse_standalone(["--nproc_per_node=4", "--nnodes", "1", "--standalone", "s.py", "-a"]) == \
        StandaloneJob(4, ["-u", "s.py"], ["-a"])
    for torchrun_only in (["--nproc-per-node", "2", "-m", "m"],                         # no --standalone
                          ["--standalone", "-m", "m"],                                   # no nproc
                          ["--standalone", "--nproc-per-node", "2", "--nnodes", "2", "-m", "m"],
                          ["--standalone", "--nproc-per-node", "gpu", "-m", "m"],
                          ["--standalone", "--nproc-per-node", "0", "-m", "m"],
                          ["--standalone", "--nproc-per-node", "2", "--max-restarts", "1", "-m", "m"],
                          ["--standalone", "--nproc-per-node", "2", "--no-python", "x"],
                          ["--standalone", "--nproc-per-node", "2"]):
        assert parse_standalone(torchrun_only) is None, torchrun_only
    monkeypatch.setenv(LAUNCHER_ENV, "torchrun")
    assert parse_standalone(["--standalone", "--nproc-per-node", "2", "-m", "m"]) is None


def test_rank_env_is_torchruns_contract():
    env = rank_env(1, 2, 29511, "dtv-x", base={"PATH": "/bin"})
    assert env["RANK"] == env["LOCAL_RANK"] == "1" and env["WORLD_SIZE"] == env["LOCAL_WORLD_SIZE"] == "2"
    assert (env["MASTER_ADDR"], env["MASTER_PORT"], env["TORCHELASTIC_RUN_ID"]) == ("127.0.0.1", "29511", "dtv-x")
    assert env["OMP_NUM_THREADS"] == "1" and env["PATH"] == "/bin"
    assert rank_env(0, 2, 1, "r", base={"OMP_NUM_THREADS": "4"})["OMP_NUM_THREADS"] == "4"


def test_the_reserved_port_goes_to_rank_0s_store_and_to_no_other_bind():
    """Jobs started side by side (hostile_milp --jobs) must not pick the same rendezvous port."""
    import datetime
    import socket

    import torch.distributed as dist

    held, port = reserve_port()
    try:
        for _ in range(500):                       # the kernel's port choice never lands on it
            with socket.socket() as s:
                s.bind(("0.0.0.0", 0))
                assert s.getsockname()[1] != port
        with socket.socket() as s, pytest.raises(OSError):
            s.bind(("127.0.0.1", port))            # a plain bind is refused
        store = dist.TCPStore("127.0.0.1", port, 1, True, timeout=datetime.timedelta(seconds=10))
        store.set("k", "v")                        # rank 0's store listens on it all the same
        assert store.get("k") == b"v"
        del store
    finally:
        held.close()


def _launch(tmp_path, mode, nproc=2, **kw):
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    env = dict(clean_env(), PYTHONPATH=str(REPO))
    env.pop(LAUNCHER_ENV, None)
    cmd = [sys.executable, "-X", "importtime", "-m", "dtensor_verify.launch", "--standalone",
           "--nproc-per-node", str(nproc), str(script), str(tmp_path), mode]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_ranks_start_with_the_env_and_the_launcher_never_imports_torch(tmp_path):
    proc = _launch(tmp_path, "ok", nproc=3)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert all(f"rank {r} done" in out for r in range(3)), out
    import json
    envs = [json.loads((tmp_path / f"env{r}.json").read_text()) for r in range(3)]
    assert [e["RANK"] for e in envs] == ["0", "1", "2"] and {e["WORLD_SIZE"] for e in envs} == {"3"}
    assert len({e["MASTER_PORT"] for e in envs}) == 1 and len({e["TORCHELASTIC_RUN_ID"] for e in envs}) == 1
    assert {e["ppid"] for e in envs} == {proc.pid}
    assert all(e["sid"] == e["pid"] for e in envs)      # a session each, as torchrun (autogroup CPU shares)
    launcher_imports = [ln.split("|")[-1].strip() for ln in err.splitlines() if ln.startswith("import time:")]
    assert "dtensor_verify.fast_launch" in launcher_imports      # -X importtime is the launcher's only
    assert "torch" not in launcher_imports


def test_a_failed_rank_stops_the_others_and_the_status_follows_launch_rules(tmp_path):
    t = time.monotonic()
    proc = _launch(tmp_path, "fail1")
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - t < 30, "rank 0 was not stopped when rank 1 failed"
    assert proc.returncode == 2, err          # rank 0 stopped by SIGTERM: no verdict of its own
    assert "was killed by" not in err          # the clean-up SIGTERM is not reported


def test_rank0_finished_by_itself_is_exit_0_even_if_another_rank_fails_later(tmp_path):
    proc = _launch(tmp_path, "rank0-verdict")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "rank 0 done" in out


def test_sigterm_to_the_launcher_reaches_the_ranks(tmp_path):
    proc = _launch(tmp_path, "sleep")
    until = time.monotonic() + 30
    while not all((tmp_path / f"env{r}.json").exists() for r in range(2)) and time.monotonic() < until:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=40)
    assert proc.returncode == 128 + signal.SIGTERM, err


def test_a_killed_rank_is_reported_in_one_line(tmp_path):
    """SIGKILL of rank 1 while both sleep: one line naming it, status 2 (rank 0 had no verdict)."""
    proc = _launch(tmp_path, "sleep")
    until = time.monotonic() + 30
    while not (tmp_path / "env1.json").exists() and time.monotonic() < until:
        time.sleep(0.05)
    time.sleep(0.1)
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit() and _ppid(int(p)) == proc.pid]
    victim = [p for p in pids if b"\0RANK=1\0" in _environ(p)]
    assert len(victim) == 1
    os.kill(victim[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert [ln for ln in err.splitlines() if "was killed by" in ln] == \
        [f"dtensor-verify: error: rank 1 (pid {victim[0]}) was killed by SIGKILL"]


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return int(fh.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _environ(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            return b"\0" + fh.read()
    except OSError:
        return b""
