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
from proc_env import clean_env

import model_zoo

pytestmark = pytest.mark.distributed

REPO = Path(__file__).resolve().parents[1]


def _env():
    return clean_env()


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


def test_cli_run_branch_and_bound_on_a_2x2_mesh(tmp_path):
    """`run --mesh 2x2 --plan spec` under torchrun on an instance only branch and bound decides:
    the known verdict, decided by bab on 4 workers, in the results file and the JSON."""
    bench = model_zoo.benchmarks_dir() / "mnist_fc"
    results, report = tmp_path / "result.txt", tmp_path / "run.json"
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4",
          "-m", "dtensor_verify", "--threads", "1", "run",
          "--onnx", str(bench / "onnx" / "mnist-net_256x2.onnx.gz"),
          "--vnnlib", str(bench / "vnnlib" / "prop_11_0.05.vnnlib.gz"),
          "--results", str(results), "--timeout", "120", "--mesh", "2x2", "--plan", "spec",
          "--json", str(report), "--quiet"], timeout=300)
    assert results.read_text().split() == ["unsat"]
    data = json.loads(report.read_text())
    assert data["verdict"] == "unsat" and data["decided_by"] == "bab", data.get("decided_by")
    assert data["bounds"]["bab"]["workers"] == 4 and data["bounds"]["bab"]["domains_visited_all_workers"] > 0
