"""The explicit batch axis (dtensor_verify/batch_axis.py): models whose input has no leading batch
dim of 1, or whose ops act on axis 0, load (the onnxruntime self-check passes) and get sound
bounds (sampling + PGD, every method); what cannot be rewritten is refused in one line."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

import dtensor_verify as dv
from dtensor_verify.batch_axis import needs_batch_axis
from dtensor_verify.errors import UnsupportedOpError
from onnx_factory import build, const, ort_runner, rand, shape_const
from op_checks import check_network


def _agrees_with_ort(path, model, n=16):
    run = ort_runner(path)
    xs = torch.randn(n, *model.input_shape, generator=torch.Generator().manual_seed(3))
    ours = model.forward(xs).detach().double().numpy().reshape(n, -1)
    ref = np.stack([run(x.numpy()) for x in xs])
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def _vector_net(tmp_path):
    """x [6]: W @ x (W on the left of a vector), Concat / Gather / Reshape / Transpose / ReduceSum
    over axis 0, Shape of the input as a constant."""
    nodes = [helper.make_node("MatMul", ["w", "x"], ["m"]), helper.make_node("Add", ["m", "b"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]), helper.make_node("Concat", ["r", "c"], ["cat"], axis=0),
             helper.make_node("Gather", ["cat", "gi"], ["g"], axis=0),
             helper.make_node("Reshape", ["g", "rs"], ["g2"]),
             helper.make_node("Transpose", ["g2"], ["t"], perm=[1, 0]),
             helper.make_node("Relu", ["t"], ["t2"]),
             helper.make_node("ReduceSum", ["t2", "ax0"], ["s"], keepdims=0),
             helper.make_node("Shape", ["x"], ["sh"]), helper.make_node("Cast", ["sh"], ["shf"], to=1),
             helper.make_node("Mul", ["s", "shf"], ["y"])]
    inits = [const("w", rand((5, 6), 1)), const("b", rand((5,), 2)), const("c", rand((2,), 3)),
             shape_const("gi", [6, 0, 3, 1, 4, 5]), shape_const("rs", [3, 2]), shape_const("ax0", [0])]
    return build(tmp_path, "vector", nodes, inits, [6])


def _matrix_net(tmp_path):
    """x [2, 3] (first dim not a batch): Gemm, Transpose, constant-on-the-left MatMul, Slice /
    Split / Unsqueeze / Squeeze / Softmax on axis 0, Flatten at axis 0."""
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["g"]), helper.make_node("Relu", ["g"], ["r"]),
             helper.make_node("Transpose", ["r"], ["t"], perm=[1, 0]),
             helper.make_node("MatMul", ["w2", "t"], ["m"]),
             helper.make_node("Slice", ["m", "st", "en", "ax"], ["sl"]),
             helper.make_node("Split", ["sl", "sp"], ["s1", "s2"], axis=0),
             helper.make_node("Sub", ["s1", "s2"], ["d"]), helper.make_node("Relu", ["d"], ["dr"]),
             helper.make_node("Unsqueeze", ["dr", "u0"], ["u"]), helper.make_node("Squeeze", ["u", "u0"], ["q"]),
             helper.make_node("Softmax", ["q"], ["sm"], axis=0),
             helper.make_node("Flatten", ["sm"], ["y"], axis=0)]
    inits = [const("w", rand((3, 4), 4)), const("b", rand((4,), 5)), const("w2", rand((5, 4), 6)),
             shape_const("st", [0]), shape_const("en", [4]), shape_const("ax", [0]), shape_const("sp", [2, 2]),
             shape_const("u0", [0])]
    return build(tmp_path, "matrix", nodes, inits, [2, 3])


def _acopf_like(tmp_path):
    """x [1, 4] whose dim 0 is data (ml4acopf): Transpose, W @ x^T, Transpose back."""
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0]), helper.make_node("MatMul", ["w", "t"], ["m"]),
             helper.make_node("Transpose", ["m"], ["mt"], perm=[1, 0]), helper.make_node("Relu", ["mt"], ["r"]),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1)]
    inits = [const("w", rand((3, 4), 7)), const("w2", rand((2, 3), 8)), const("b2", rand((2,), 9))]
    return build(tmp_path, "acopf_like", nodes, inits, [1, 4])


def _conv_native(tmp_path):
    """x [8] reshaped to [1, 2, 2, 2] for a Conv (its dim 0 is 1: kept as the Conv's batch)."""
    nodes = [helper.make_node("Reshape", ["x", "rs"], ["x4"]),
             helper.make_node("Conv", ["x4", "cw", "cb"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("ReduceMean", ["r"], ["y"], axes=[0, 2],
                                                                      keepdims=0)]
    inits = [shape_const("rs", [1, 2, 2, 2]), const("cw", rand((3, 2, 3, 3), 10)), const("cb", rand((3,), 11))]
    return build(tmp_path, "conv_native", nodes, inits, [8])


@pytest.mark.parametrize("make", [_vector_net, _acopf_like, pytest.param(_matrix_net, marks=pytest.mark.slow),
                                  pytest.param(_conv_native, marks=pytest.mark.slow)])
def test_batch_axis_models_sound(tmp_path, make):
    path = make(tmp_path)
    assert needs_batch_axis(onnx.load(path))
    model = check_network(path, None, seeds=(0,), alpha_iters=3)
    proto_in = [d.dim_value for d in onnx.load(path).graph.input[0].type.tensor_type.shape.dim]
    assert tuple(model.input_shape) == tuple(proto_in)      # the whole ONNX input is one sample
    _agrees_with_ort(path, model)


def test_batched_models_untouched(tmp_path):
    """A model with a batch dim of 1 and no op on axis 0 is loaded as before (no rewrite)."""
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1]), helper.make_node("Relu", ["t"], ["y"])]
    path = build(tmp_path, "plain", nodes, [], [1, 2, 3])
    assert not needs_batch_axis(onnx.load(path))
    assert dv.load(path).input_shape == (2, 3)


def test_batch_native_op_on_a_real_batch_refused(tmp_path):
    """A Conv whose dim 0 is 2 (two images in one sample) cannot get a batch axis: one line."""
    nodes = [helper.make_node("Conv", ["x", "cw"], ["y"], name="the_conv")]
    path = build(tmp_path, "two_images", nodes, [const("cw", rand((1, 1, 1, 1), 1))], [2, 1, 3, 3])
    with pytest.raises(UnsupportedOpError) as exc:
        dv.load(path)
    msg = str(exc.value)
    assert "\n" not in msg and "'the_conv' (Conv)" in msg and "dim 0" in msg


def test_unknown_op_on_axis0_refused(tmp_path):
    nodes = [helper.make_node("CumSum", ["x", "ax"], ["c"]), helper.make_node("TopK", ["c", "k"], ["y", "i"],
                                                                              name="topk")]
    path = build(tmp_path, "topk", nodes, [shape_const("ax", [0]), shape_const("k", [2])], [4], check=False)
    with pytest.raises(UnsupportedOpError, match=r"'topk' \(TopK\): no batch-axis rule"):
        dv.load(path)


ML4 = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "ml4acopf_2024"


def test_ml4acopf_loads_and_crown_is_sound():
    """ml4acopf 2024 (Transpose of its [1, 22] input, W @ x^T, products, sin / cos by ReLUs):
    loads (self-check vs onnxruntime), CROWN bounds hold for sampled points of the first
    property's box."""
    model_path = ML4 / "onnx" / "14_ieee_ml4acopf-linear-residual.onnx.gz"
    prop_path = ML4 / "vnnlib" / "14_ieee_prop1.vnnlib.gz"
    if not model_path.exists() or not prop_path.exists():
        pytest.skip("the shared ml4acopf_2024 benchmark is absent")
    from dtensor_verify.specs import read_vnnlib

    model = dv.load(str(model_path))
    prop = read_vnnlib(str(prop_path), n_inputs=model.n_inputs, n_outputs=model.n_outputs)
    region = prop.regions[0]
    lo = torch.tensor(np.asarray(region.lower), dtype=torch.float32).reshape(1, *model.input_shape)
    hi = torch.tensor(np.asarray(region.upper), dtype=torch.float32).reshape(1, *model.input_shape)
    r = model.compute_bounds(lo, hi, "crown")
    run = ort_runner(str(model_path))
    gen = np.random.default_rng(0)
    l, h = lo.flatten().numpy(), hi.flatten().numpy()
    pts = [(l + h) / 2] + [np.where(gen.random(l.size) < 0.5, l, h) for _ in range(32)] + \
          [l + (h - l) * gen.random(l.size) for _ in range(64)]
    ys = np.stack([run(p) for p in pts])
    lower, upper = r.lower.double().numpy().ravel(), r.upper.double().numpy().ravel()
    assert np.isfinite(lower).all() and np.isfinite(upper).all()
    assert (ys >= lower - 1e-4).all() and (ys <= upper + 1e-4).all()
