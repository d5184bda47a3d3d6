"""Comparisons and booleans of perturbed tensors (dtensor_verify/onnx_booleans.py: exact float
indicators from Sign / Relu / Abs): the models load (self-check against onnxruntime), their bounds
hold for sampled and attacked points (every method), a pinned input gives the exact value, and a
boolean the rewrite cannot express stays refused in one line."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import dtensor_verify as dv
from onnx_factory import build, const, rand
from op_checks import check_network


def _n(op, ins, outs, **attrs):
    return helper.make_node(op, ins, outs, **attrs)


def _gemm_relu():
    return [_n("Gemm", ["x", "w", "b"], ["g"], transB=1), _n("Relu", ["g"], ["r"])], \
        [const("w", rand((3, 3), 1)), const("b", rand((3,), 2))]


CASES = {
    # Where(r > t, r, k): the ReLU that returns a constant below a threshold (where01's form).
    "where_greater": [_n("Greater", ["r", "t"], ["c"]), _n("Where", ["c", "r", "k"], ["y"])],
    "equal_less_or": [_n("Equal", ["r", "z"], ["e"]), _n("Less", ["r", "t"], ["l"]), _n("Or", ["e", "l"], ["o"]),
                      _n("Cast", ["o"], ["y"], to=TensorProto.FLOAT)],
    "ge_le_and_not": [_n("GreaterOrEqual", ["r", "z"], ["a"]), _n("LessOrEqual", ["r", "t"], ["le"]),
                      _n("And", ["a", "le"], ["ab"]), _n("Not", ["ab"], ["n"]),
                      _n("Where", ["n", "k", "r"], ["y"])],
    "cast_bool": [_n("Cast", ["r"], ["bo"], to=TensorProto.BOOL), _n("Cast", ["bo"], ["f"], to=TensorProto.FLOAT),
                  _n("Mul", ["f", "k"], ["y"])],
}


@pytest.mark.parametrize("case", [c if c == "ge_le_and_not" else pytest.param(c, marks=pytest.mark.slow) for c in CASES])
def test_comparison_models_sound(tmp_path, case):
    head, inits = _gemm_relu()
    inits += [const("t", np.float32(0.3)), const("z", np.float32(0.0)), const("k", rand((3,), 3))]
    path = build(tmp_path, case, head + CASES[case], inits, [1, 3])
    check_network(path, None, seeds=(0,), width=0.8, alpha_iters=3)


def test_pinned_input_at_the_threshold_is_exact(tmp_path):
    """x pinned to the threshold (an interval [c, c]): Sign's jump limits are not counted, so
    x == c is exactly 1 and x > c exactly 0."""
    nodes = [_n("Equal", ["x", "t"], ["e"]), _n("Greater", ["x", "t"], ["g"]),
             _n("Cast", ["e"], ["ef"], to=TensorProto.FLOAT), _n("Cast", ["g"], ["gf"], to=TensorProto.FLOAT),
             _n("Concat", ["ef", "gf"], ["y"], axis=1)]
    path = build(tmp_path, "pinned", nodes, [const("t", np.float32(0.5))], [1, 1])
    model = dv.load(path)
    x = torch.full((1, 1), 0.5)
    for method in ("ibp", "crown"):
        r = model.compute_bounds(x, x, method)
        assert r.lower.flatten().tolist() == [1.0, 0.0] and r.upper.flatten().tolist() == [1.0, 0.0], method
    r = model.compute_bounds(x - 0.25, x, "crown")          # reaches the threshold from below
    assert r.lower.flatten().tolist() == [0.0, 0.0] and r.upper.flatten().tolist() == [1.0, 0.0]


def test_boolean_output_is_refused(tmp_path):
    """A boolean the rewrite cannot express (here the graph's output) is left alone: one line."""
    nodes = [_n("Greater", ["x", "t"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.BOOL, [1, 2])],
                              [const("t", np.float32(0.0))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "bool_out.onnx"
    onnx.save(model, path)
    with pytest.raises(dv.VerifierError) as exc:
        dv.load(str(path))
    assert "\n" not in str(exc.value) and "bool" in str(exc.value)
