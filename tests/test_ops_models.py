"""Model types: float64 models are bounded in float64 end to end (no downcast); BatchNormalization
on a 3-D tensor (onnx2torch refuses it) loads through the ONNX rewrite; one smoke test per new
benchmark family (the first model of vit_2023 loads and passes the self-check; heavy runs are
`slow`)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import dtensor_verify as dv
from dtensor_verify.cli import main
from onnx_factory import build, const, rand
from op_checks import check_network

BENCH = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "benchmarks")


def _f64(name, value):
    return numpy_helper.from_array(np.asarray(value, dtype=np.float64), name)


def _double_net(tmp_path):
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "b"], ["a"]),
             helper.make_node("Sigmoid", ["a"], ["s"]), helper.make_node("MatMul", ["s", "W2"], ["y"])]
    inits = [_f64("W", rand((3, 5), 0)), _f64("b", rand((5,), 1)), _f64("W2", rand((5, 2), 2))]
    return build(tmp_path, "double", nodes, inits, [1, 3], elem_type=TensorProto.DOUBLE)


def test_float64_model_bounds_in_float64(tmp_path, one_thread):
    path = _double_net(tmp_path)
    model = dv.load(path)
    assert model.dtype == torch.float64
    assert all(p.dtype == torch.float64 for p in model.module.parameters())
    check_network(path, None, seeds=(0,), width=0.5, alpha_iters=3)
    lo = torch.zeros(1, 3, dtype=torch.float64)
    r = model.compute_bounds(lo, lo + 1e-9, "crown")
    assert r.lower.dtype == torch.float64
    # A box of width 1e-9 is resolved in float64: the bounds are ~1e-9 wide, not float32's ~1e-7.
    assert float((r.upper - r.lower).max()) < 1e-7


def test_float64_model_cli_bounds(tmp_path, capsys):
    path = _double_net(tmp_path)
    lower, upper = tmp_path / "lo.txt", tmp_path / "hi.txt"
    lower.write_text("0 0 0")
    upper.write_text("0.5 0.5 0.5")
    assert main(["bounds", path, "--lower", str(lower), "--upper", str(upper), "--method", "crown"]) == 0


def test_batchnorm_rank3_loads(tmp_path, one_thread):
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["r"]),
             helper.make_node("BatchNormalization", ["r", "s", "b", "m", "v"], ["n"], epsilon=1e-3),
             helper.make_node("Relu", ["n"], ["a"]), helper.make_node("Flatten", ["a"], ["f"]),
             helper.make_node("Gemm", ["f", "W", "c"], ["y"], transB=1)]
    inits = [numpy_helper.from_array(np.asarray([1, 3, 4], np.int64), "shape"), const("s", rand((3,), 1)),
             const("b", rand((3,), 2)), const("m", rand((3,), 3)), const("v", np.abs(rand((3,), 4)) + 0.5),
             const("W", rand((2, 12), 5)), const("c", rand((2,), 6))]
    path = build(tmp_path, "bn3", nodes, inits, [1, 12], opset=11)
    check_network(path, None, seeds=(0,), width=0.5, alpha_iters=3)


def _first(folder):
    with open(os.path.join(BENCH, folder, "instances.csv")) as fh:
        model = fh.readline().split(",")[0].strip()
    p = os.path.normpath(os.path.join(BENCH, folder, model))
    return p if os.path.exists(p) else p + ".gz"


@pytest.mark.skipif(not os.path.isdir(BENCH), reason="benchmarks not available")
def test_vit_loads_with_selfcheck(one_thread):
    """ViT (Softmax, MatMul of activations, BatchNorm on tokens, Transpose, Concat, Gather): loads,
    and its self-check against onnxruntime passes."""
    m = dv.load(_first("vit_2023"))
    assert m.self_check_deviation is not None and m.self_check_deviation < 1e-4


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(BENCH), reason="benchmarks not available")
@pytest.mark.parametrize("folder", ["vit_2023", "dist_shift_2023", "linearizenn", "nn4sys_2023", "cgan_2023",
                                    "tllverifybench_2023", "collins_rul_cnn_2023"])
def test_benchmark_first_model_sound(folder):
    """Each family's first model: CROWN bounds contain onnxruntime outputs of sampled box points."""
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
    import bench_ops_models as b

    row = b.run_one(os.path.abspath(BENCH), folder, "crown", 1800, 50)
    assert row["loads"] == "yes" and row["sound"] == "yes", row


@pytest.mark.parametrize("kind, verdict", [("unsat", "unsat"), ("sat", "sat")])
def test_float64_model_run_verdicts(tmp_path, kind, verdict):
    """`run` end to end on a float64 Sigmoid network: unsat proved in float64 (branch and bound is
    skipped: not a ReLU network), sat confirmed by onnxruntime."""
    path = _double_net(tmp_path)
    cond = "(assert (>= Y_0 100.0))" if kind == "unsat" else "(assert (<= Y_0 100.0))"
    spec = tmp_path / f"{kind}.vnnlib"
    spec.write_text("".join(f"(declare-const X_{i} Real)\n" for i in range(3)) + "(declare-const Y_0 Real)\n"
                    "(declare-const Y_1 Real)\n" + "".join(f"(assert (>= X_{i} 0.0))\n(assert (<= X_{i} 0.5))\n"
                                                         for i in range(3)) + cond + "\n")
    out = tmp_path / "result.txt"
    assert main(["run", "--onnx", path, "--vnnlib", str(spec), "--results", str(out), "--timeout", "120"]) == 0
    assert out.read_text().splitlines()[0] == verdict
