"""Multi-node launch, emulated on this host: two torchrun agents (`--nnodes 2 --node-rank 0|1`),
one process each, meeting through torchrun's c10d rendezvous on `localhost:PORT` (a free port
picked at run time). The two ranks form the mesh across "nodes" exactly as on two machines; the
verdicts must be the one-process ones.

    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 1 --rdzv-backend c10d \
        --rdzv-endpoint HOST0:29500 --rdzv-id job1 -m dtensor_verify run ...   # on node 0
    torchrun --nnodes 2 --node-rank 1 ... (same)                              # on node 1
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from proc_env import clean_env

import model_zoo

pytestmark = pytest.mark.distributed

REPO = Path(__file__).resolve().parents[1]
INSTANCES = ("prop_0_0.03",)


def _env():
    return clean_env()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _run_args(bench, name, results):
    return ["run", "--onnx", str(bench / "onnx" / "mnist-net_256x2.onnx.gz"),
            "--vnnlib", str(bench / "vnnlib" / f"{name}.vnnlib.gz"), "--results", str(results),
            "--timeout", "120", "--quiet"]


def _two_nodes(args, tmp_path, tag):
    port = _free_port()
    agents = []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node),
               "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"localhost:{port}",
               "--rdzv-id", f"multinode-{tag}", "--rdzv-conf", f"is_host={1 if node == 0 else 0}",
               "-m", "dtensor_verify", "--threads", "1", *args]
        log = open(tmp_path / f"node{node}-{tag}.log", "w")
        agents.append((subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT), log))
    for proc, log in agents:
        try:
            proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
    for node, (proc, _) in enumerate(agents):
        assert proc.returncode == 0, (node, (tmp_path / f"node{node}-{tag}.log").read_text()[-4000:])


def test_two_nodes_by_c10d_rendezvous_give_the_one_process_verdicts(tmp_path):
    bench = model_zoo.benchmarks_dir() / "mnist_fc"
    for name in INSTANCES:
        one = tmp_path / f"{name}-one.txt"
        subprocess.run([sys.executable, "-m", "dtensor_verify", "--threads", "1", *_run_args(bench, name, one)],
                       cwd=REPO, env=_env(), check=True, capture_output=True, timeout=300)
        two = tmp_path / f"{name}-two.txt"
        _two_nodes([*_run_args(bench, name, two), "--plan", "fsdp"], tmp_path, name)
        ref, got = one.read_text().split(), two.read_text().split()
        assert ref[0] in ("sat", "unsat"), ref
        assert got[0] == ref[0], (name, got[:1], ref[:1])
