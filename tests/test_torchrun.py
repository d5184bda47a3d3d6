"""The CLI under torchrun: `torchrun --standalone --nproc-per-node 2 -m dtensor_verify bounds ...`.

`--standalone` makes torchrun rendezvous on `localhost:0`, i.e. a free port picked by the OS, so
several of these can run at once (pytest -n). The FSDP bounds written to the JSON by rank 0 must
be bitwise equal to a one-process run of the same command (both with 1 torch thread: torchrun
sets OMP_NUM_THREADS=1 for its workers, and `--threads 1` makes it explicit).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import model_zoo

pytestmark = pytest.mark.distributed

REPO = Path(__file__).resolve().parents[1]


def _env():
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _run(cmd, timeout):
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)}\nexit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-6000:]}"
    return proc


@pytest.mark.parametrize("method, plan", [("crown", "fsdp")])
def test_cli_bounds_under_torchrun_match_one_process(tmp_path, method, plan):
    if not (REPO / "dtensor_verify" / "cli.py").exists():
        pytest.fail("dtensor_verify/cli.py is missing")
    bench = model_zoo.benchmarks_dir() / "mnist_fc"
    model = str(bench / "onnx" / "mnist-net_256x2.onnx.gz")
    spec = str(bench / "vnnlib" / "prop_0_0.03.vnnlib.gz")
    args = ["bounds", model, "--vnnlib", spec, "--method", method, "--quiet"]

    one = tmp_path / "one.json"
    _run([sys.executable, "-m", "dtensor_verify", "--threads", "1", *args, "--json", str(one)], timeout=300)
    two = tmp_path / "two.json"
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
          "-m", "dtensor_verify", "--threads", "1", *args, "--plan", plan, "--json", str(two)], timeout=300)

    ref, got = json.loads(one.read_text()), json.loads(two.read_text())
    assert ref["world_size"] == 1 and got["world_size"] == 2, (ref["world_size"], got["world_size"])
    assert got["plan"] == plan and got["method"] == ref["method"] == method
    assert len(got["lower"]) == len(ref["lower"]) == 10
    assert got["lower"] == ref["lower"], (got["lower"], ref["lower"])      # bitwise (float32 -> JSON)
    assert got["upper"] == ref["upper"], (got["upper"], ref["upper"])
    assert all(lo <= up for lo, up in zip(got["lower"], got["upper"]))
