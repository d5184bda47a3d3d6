"""`--device` / `dv.load(..., device=)` (issue 13: one GPU by default).

There is no GPU on the test machine, so:
* the choice of device is tested with torch.cuda's answers replaced (a machine "with 2 GPUs");
* `--device cuda` without a GPU must be one error line, exit 2 (and an `error` result file);
* that every tensor the pipeline creates follows the model's device is tested by running the
  model on the CPU while torch's *default* device is "meta": a tensor created without an
  explicit device lands on meta, and the first op mixing it with the model's CPU tensors fails
  (a meta tensor has no data). The same run with the default device left alone must agree.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import dtensor_verify as dv
import model_zoo as zoo
from dtensor_verify.cli import main
from dtensor_verify.device import resolve_device
from dtensor_verify.errors import DeviceError
from dtensor_verify.specs import parse_vnnlib, read_result_file, read_vnnlib
from dtensor_verify.verify import AttackOptions, verify_instance

REPO = Path(__file__).resolve().parents[1]
TEST = zoo.benchmarks_dir() / "test"
MNIST = zoo.benchmarks_dir() / "mnist_fc"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _not_under_torchrun(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def two_gpus(monkeypatch):
    """torch.cuda as on a machine with two GPUs (nothing is ever placed on them here)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


def _one_error_line(capsys, *needles) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("dtensor-verify: error: ")]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


# ------------------------------------------------------------------------------------------ choice

def test_without_a_gpu_auto_is_the_cpu_and_cuda_is_refused():
    assert not torch.cuda.is_available()
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("CPU") == torch.device("cpu")
    for spec in ("cuda", "cuda:0", torch.device("cuda")):
        with pytest.raises(DeviceError, match="--device cpu"):
            resolve_device(spec, what="--device")
    with pytest.raises(DeviceError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    with pytest.raises(DeviceError, match="not a device"):
        resolve_device("cuda:x")


def test_with_gpus_auto_takes_one(two_gpus):
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(DeviceError, match="no GPU cuda:2 .2 visible"):
        resolve_device("cuda:2")
    assert resolve_device("cpu") == torch.device("cpu")


def test_under_torchrun_each_rank_keeps_its_own_gpu(two_gpus, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in (0, 1):
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        assert resolve_device("auto") == torch.device("cuda", rank)
        assert resolve_device("cuda") == torch.device("cuda", rank)
    with pytest.raises(DeviceError, match="every torchrun rank on one GPU"):
        resolve_device("cuda:1")
    # The placement pass moves the model to the mesh's device for this rank: a torch.device passes.
    assert resolve_device(torch.device("cuda", 1)) == torch.device("cuda", 1)
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(DeviceError, match="LOCAL_RANK is 2 but only 2 GPU"):
        resolve_device("auto")
    assert resolve_device("cpu") == torch.device("cpu")


# ------------------------------------------------------------------------------------------ CLI

def test_cli_device_cuda_without_a_gpu_is_one_line_exit_2(tmp_path, capsys):
    onnx, prop = str(TEST / "test_sat.onnx"), str(TEST / "test_prop.vnnlib")
    assert main(["bounds", onnx, "--vnnlib", prop, "--device", "cuda"]) == 2
    _one_error_line(capsys, "--device", "cuda", "--device cpu")

    res = tmp_path / "r.txt"
    assert main(["run", "--onnx", onnx, "--vnnlib", prop, "--results", str(res), "--timeout", "30",
                 "--device", "cuda:0"]) == 2
    _one_error_line(capsys, "--device")
    assert res.read_text().splitlines()[0] == "error"

    assert main(["benchmark", str(TEST), "--csv", str(tmp_path / "b.csv"), "--device", "cuda", "--quiet"]) == 2
    _one_error_line(capsys, "--device")
    assert main(["bounds", onnx, "--vnnlib", prop, "--device", "tpu"]) == 2
    _one_error_line(capsys, "unknown device 'tpu'")


def test_cli_device_cuda_in_a_fresh_process(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    res = tmp_path / "r.txt"
    proc = subprocess.run([sys.executable, "-m", "dtensor_verify", "run", "--onnx", str(TEST / "test_unsat.onnx"),
                           "--vnnlib", str(TEST / "test_prop.vnnlib"), "--results", str(res), "--timeout", "30",
                           "--device", "cuda"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("dtensor-verify: error: --device cuda")
    assert res.read_text().splitlines()[0] == "error"


def test_cli_device_cpu_is_used_and_reported(tmp_path, capsys):
    onnx, prop = str(TEST / "test_unsat.onnx"), str(TEST / "test_prop.vnnlib")
    out = tmp_path / "b.json"
    assert main(["bounds", onnx, "--vnnlib", prop, "--spec-rows", "--device", "cpu", "--json", str(out), "--quiet"]) == 0
    assert json.loads(out.read_text())["device"] == "cpu"
    res, j = tmp_path / "r.txt", tmp_path / "r.json"
    assert main(["run", "--onnx", onnx, "--vnnlib", prop, "--results", str(res), "--timeout", "30", "--quiet",
                 "--device", "cpu", "--json", str(j)]) == 0
    assert read_result_file(res)[0] == "unsat"
    info = json.loads(j.read_text())
    assert info["device"] == "cpu"
    assert set(info["startup"]) >= {"imports", "load", "property", "verify", "write", "main_entered_at"}
    capsys.readouterr()


# ------------------------------------------------------------------------------------------ API

def test_api_device_argument_and_to():
    model = dv.load(str(TEST / "test_sat.onnx"), device="cpu")
    assert model.device == torch.device("cpu") and model.layout.device == torch.device("cpu")
    assert model.to("auto") is model and model.device == torch.device("cpu")
    with pytest.raises(DeviceError, match="device='cuda'"):
        dv.load(str(TEST / "test_sat.onnx"), device="cuda")
    net, shape = zoo.random_mlp([4, 8, 3], seed=0)
    assert dv.load(net, shape).device == torch.device("cpu")      # None: where the weights are


# ------------------------------------------------------------------------------------------ audit

def _on_meta_by_default(fn):
    """Run fn() with torch's default device set to meta (see the module docstring)."""
    with torch.device("meta"):
        return fn()


@pytest.mark.parametrize("net", ["mlp", "cnn", "residual", "normalized"])
def test_compute_bounds_creates_no_tensor_off_the_model_device(net):
    make = {"mlp": lambda: zoo.random_mlp([6, 12, 12, 3], seed=0), "cnn": lambda: zoo.random_cnn("basic", seed=0),
            "residual": lambda: zoo.residual_net(seed=0), "normalized": lambda: zoo.normalized_mlp(seed=0)}[net]
    module, shape = make()
    model = dv.load(module, shape, device="cpu")
    lo, hi = zoo.random_box(shape, 0.05, seed=1)
    lo, hi = lo.numpy(), hi.numpy()              # numpy in: the API makes the tensors itself
    C = np.eye(model.n_outputs, dtype=np.float32)[None, :2] - np.eye(model.n_outputs, dtype=np.float32)[None, 2:4]
    for method in dv.METHODS:
        kw = dict(method=method, C=C, alpha_options=dv.AlphaOptions(iterations=3))
        ref = model.compute_bounds(lo, hi, **kw)
        got = _on_meta_by_default(lambda: model.compute_bounds(lo, hi, **kw))
        assert got.lower.device.type == "cpu"
        assert torch.equal(got.lower, ref.lower) and torch.equal(got.upper, ref.upper), method


def _unknown_instance():
    """An MLP and a property neither the attack nor the bounds decide: `Y_0 >= t` with t halfway
    between the best sampled Y_0 and alpha-CROWN's upper bound. Every phase of the pipeline runs."""
    module, shape = zoo.random_mlp([4, 16, 16, 3], seed=3)
    model = dv.load(module, shape, device="cpu")
    lo, hi = -np.ones(4, np.float32), np.ones(4, np.float32)
    ub = model.compute_bounds(lo, hi, method="alpha-crown", alpha_options=dv.AlphaOptions(iterations=100)).upper
    xs = torch.rand(20000, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    best = model.forward(xs)[:, 0].max().item()
    t = best + 0.5 * (ub[0, 0].item() - best)
    text = "".join(f"(declare-const X_{i} Real)\n" for i in range(4))
    text += "".join(f"(declare-const Y_{j} Real)\n" for j in range(3))
    text += "".join(f"(assert (>= X_{i} -1))\n(assert (<= X_{i} 1))\n" for i in range(4))
    text += f"(assert (>= Y_0 {t!r}))\n"
    return model, parse_vnnlib(text, n_inputs=4, n_outputs=3)


@pytest.mark.parametrize("case", ["sat", "unsat", "unknown", "bab"])
def test_verify_instance_creates_no_tensor_off_the_model_device(case):
    opts = AttackOptions(restarts=5, steps=20, extra_rounds=1)
    expected, bab = case, True
    if case in ("unknown", "bab"):
        # Undecided by the attack and the bounds: without branch and bound it stays unknown,
        # with it branch and bound proves it.
        model, prop = _unknown_instance()
        onnx = None
        expected, bab = ("unknown", False) if case == "unknown" else ("unsat", True)
    else:
        onnx = str(TEST / f"test_{case}.onnx")
        model = dv.load(onnx, device="cpu")
        prop = read_vnnlib(TEST / "test_prop.vnnlib", n_inputs=model.n_inputs, n_outputs=model.n_outputs)
    ref = verify_instance(model, prop, onnx, 60, attack_options=opts, bab=bab)
    got = _on_meta_by_default(lambda: verify_instance(model, prop, onnx, 60, attack_options=opts, bab=bab))
    assert ref.verdict == expected, (ref.verdict, ref.message)
    assert got.verdict == expected, (got.message, got.traceback)
    assert set(got.phases) == set(ref.phases)
    if case == "unknown":
        assert {"attack", "crown", "alpha-crown", "attack-extra"} <= set(got.phases), got.phases
    if case == "bab":
        assert got.decided_by == "bab" and "bab" in got.phases, (got.decided_by, got.phases)


def test_pgd_creates_no_tensor_off_the_box_device():
    from dtensor_verify.attack import pgd

    module, shape = zoo.random_mlp([4, 8, 3], seed=0)
    model = dv.load(module, shape, device="cpu")
    lo, hi = zoo.random_box(shape, 0.1, seed=0, batch=2)
    ref = pgd(model.forward, lo, hi, lambda out: out[..., 0], steps=3, restarts=2)
    got = _on_meta_by_default(lambda: pgd(model.forward, lo, hi, lambda out: out[..., 0], steps=3, restarts=2))
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])


def test_gpu_arithmetic_is_full_float32():
    """TF32 (cuDNN's default for convolutions on Ampere/Hopper) moved an H100's outputs ~1e-3
    away from onnxruntime's: a CUDA model must run in full float32."""
    from dtensor_verify.device import exact_float32

    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision())
    try:
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cuda.matmul.allow_tf32 = True
        exact_float32()
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        assert torch.get_float32_matmul_precision() == "highest"
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old[:2]
        torch.set_float32_matmul_precision(old[2])


def test_picking_a_gpu_sets_growable_allocator_segments_unless_the_user_chose(two_gpus, monkeypatch):
    """Before CUDA starts, every entry point that picks a GPU asks for expandable segments (fixed
    ones left 1-2 GiB reserved but unusable next to other processes on one GPU); the user's own
    PYTORCH_CUDA_ALLOC_CONF is kept, and the CPU leaves it alone."""
    import os

    from dtensor_verify import device

    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "")      # (recorded: restored after the test)
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF")
    device.resolve_device("cpu")
    assert "PYTORCH_CUDA_ALLOC_CONF" not in os.environ
    device.resolve_device("cuda")
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:128")
    device.resolve_device("auto")
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:128"
