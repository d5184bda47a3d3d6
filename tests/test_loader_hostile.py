"""Hostile ONNX models for the loader: every pattern it rewrites or folds, built with onnx.helper.

Each case states its outcome. A loaded model must compute what onnxruntime computes on the
original file (random inputs, checked here independently of the loader's own self-check), and its
IBP / CROWN bounds must contain onnxruntime's outputs at points sampled in a box. A refused model
must raise one `VerifierError` line naming the file (and the node where one is at fault).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

import dtensor_verify as dv
from dtensor_verify.cli import main
from onnx_factory import build, const, const_node, ort_runner, rand, shape_const

LOADED, REFUSED = "loaded", "refused"


pytestmark = pytest.mark.usefixtures("one_thread")


def node(op, inputs, outputs, name=None, **attrs):
    return helper.make_node(op, inputs, outputs, name=name or f"{op.lower()}_{outputs[0]}", **attrs)


# ----------------------------------------------------------------------------- the two checks

def assert_matches_onnxruntime(model, path, n=8, seed=0):
    run = ort_runner(path)
    gen = np.random.default_rng(seed)
    xs = gen.standard_normal((n, *model.input_shape)).astype(np.float32)
    ours = model.forward(torch.from_numpy(xs)).detach().double().numpy()      # one batch of n
    refs = np.stack([run(x) for x in xs])                                      # one at a time
    assert ours.shape == refs.shape, (ours.shape, refs.shape)
    np.testing.assert_allclose(ours, refs, rtol=1e-5, atol=1e-5)


def assert_bounds_contain_onnxruntime(model, path, radius=0.5, n=64, seed=1):
    run = ort_runner(path)
    gen = np.random.default_rng(seed)
    centre = gen.uniform(-1, 1, model.input_shape).astype(np.float32)
    lo, hi = centre - radius, centre + radius
    xs = gen.uniform(lo, hi, (n, *model.input_shape)).astype(np.float32)
    refs = np.stack([run(x) for x in xs])
    for method in ("ibp", "crown"):
        res = model.compute_bounds(torch.from_numpy(lo), torch.from_numpy(hi), method=method)
        lower, upper = res.lower[0].double().numpy(), res.upper[0].double().numpy()
        slack = 1e-5 * (1 + np.abs(refs))
        assert np.all(refs >= lower - slack), (method, (lower - refs).max())
        assert np.all(refs <= upper + slack), (method, (refs - upper).max())


def check(path, expected, *needles):
    """Load `path`; LOADED: both checks; REFUSED: one VerifierError line holding the needles."""
    if expected == LOADED:
        model = dv.load(path)
        assert_matches_onnxruntime(model, path)
        assert_bounds_contain_onnxruntime(model, path)
        return model
    with pytest.raises(dv.VerifierError) as info:
        dv.load(path)
    msg = str(info.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    for needle in (str(path), *needles):
        assert needle in msg, (needle, msg)
    return msg


# ----------------------------------------------------------------------------- MatMul operand order

W33 = np.arange(9, dtype=np.float32).reshape(3, 3) - 4.0      # not symmetric: W x != x W


@pytest.mark.parametrize("in_shape, w_shape, const_left, expected", [
    ([1, 3], (3, 4), False, LOADED),           # x @ W
    ([1, 2, 3], (3, 4), False, LOADED),        # x @ W on a matrix-valued sample
    ([1, 3, 3], (3, 3), True, LOADED),         # W @ x, the case (was x @ W^T)
    ([3, 3], (3, 3), True, LOADED),            # the same without a batch dim
    ([1, 3, 2], (4, 3), True, LOADED),         # W @ x, non-square
    ([1, 2, 3, 2], (4, 3), True, LOADED),      # W @ x, a leading per-sample dim
    ([3], (4, 3), True, LOADED),               # W @ x for a vector input (no batch dim)
], ids=["xW", "xW-matrix", "Wx-1x3x3", "Wx-3x3", "Wx-nonsquare", "Wx-rank3", "Wx-vector"])
def test_matmul_operand_order(tmp_path, in_shape, w_shape, const_left, expected):
    w = W33 if w_shape == (3, 3) else rand(w_shape, 0)
    inputs = ["W", "x"] if const_left else ["x", "W"]
    path = build(tmp_path, "mm", [node("MatMul", inputs, ["h"], "mm"), node("Relu", ["h"], ["y"])],
                 [const("W", w)], in_shape)
    check(path, expected)


def test_matmul_constant_on_left_is_not_transposed(tmp_path):
    """The issue's reproduction: W @ x with x = I gives W; the old loader gave W^T."""
    path = build(tmp_path, "wx", [node("MatMul", ["W", "x"], ["y"], "mm")], [const("W", W33)], [1, 3, 3])
    model = dv.load(path)
    y = model.forward(torch.eye(3).reshape(1, 3, 3)).reshape(3, 3)
    np.testing.assert_array_equal(y.numpy(), W33)


@pytest.mark.parametrize("in_shape, w, expected, needles", [
    ([1, 3], rand(3, 0), LOADED, ()),                              # by a vector: an exact linear map
    ([1, 3], rand((2, 3, 4), 0), LOADED, ()),                      # batched constant: an explicit batch axis
], ids=["vector", "3d-constant"])
def test_matmul_shapes_without_rewrite(tmp_path, in_shape, w, expected, needles):
    path = build(tmp_path, "mm", [node("MatMul", ["x", "W"], ["y"], "mm")], [const("W", w)], in_shape)
    check(path, expected, *needles)


def test_matmul_of_two_inputs_is_bounded(tmp_path):
    """x @ x: a product of two activations (McCormick planes, ops/products.py), no longer refused."""
    path = build(tmp_path, "xx", [node("MatMul", ["x", "x"], ["y"], "mm")], [], [1, 3, 3])
    check(path, LOADED)


def test_matmul_weight_too_large_for_the_exact_rewrite_is_refused(tmp_path, monkeypatch):
    import dtensor_verify.canonicalize as canon
    monkeypatch.setattr(canon, "MAX_REWRITE_WEIGHT", 100)
    path = build(tmp_path, "wx", [node("MatMul", ["W", "x"], ["y"], "mm")], [const("W", rand((4, 3), 0))],
                 [1, 3, 5])
    check(path, REFUSED, "mm", "weight")


# ----------------------------------------------------------------------------- Add after MatMul

@pytest.mark.parametrize("in_shape, c_shape, c_first, expected", [
    ([1, 3], (3,), False, LOADED),             # [n]: a bias
    ([1, 3], (1, 3), False, LOADED),           # [1, n]: a bias
    ([1, 3], (), False, LOADED),               # scalar
    ([1, 3], (1,), True, LOADED),              # [1], constant first
    ([1, 3], (3,), True, LOADED),              # c + h
    ([1, 3, 3], (3, 1), False, LOADED),        # a column: not a bias (broadcast over columns)
    ([1, 3, 3], (3, 3), False, LOADED),        # [m, n] on a matrix-valued sample: not a bias
    ([1, 1, 3], (3, 1), False, LOADED),        # broadcasts the sample up [1, 3] -> [3, 3]: 9 outputs
    ([1, 3], (1, 1, 3), False, LOADED),        # raises the rank: [1, 3] -> [1, 1, 3]
    ([1, 3], (3, 1), False, LOADED),           # [1, 3] + [3, 1] -> [3, 3]: dim 0 is data (batch_axis.py)
], ids=["n", "1xn", "scalar", "1-first", "n-first", "column", "mxn", "sample-up", "rank-up", "batch-up"])
def test_add_after_matmul(tmp_path, in_shape, c_shape, c_first, expected):
    c = rand(c_shape, 5) + 3.0
    inputs = ["c", "h"] if c_first else ["h", "c"]
    path = build(tmp_path, "mmadd", [node("MatMul", ["x", "W"], ["h"], "mm"), node("Add", inputs, ["y"], "add")],
                 [const("W", W33), const("c", c)], in_shape)
    msg = check(path, expected, *(("add", "batch") if expected == REFUSED else ()))
    if expected == LOADED:
        assert msg.n_outputs == ort_runner(path)(np.zeros(in_shape)).size


def test_column_add_is_not_folded_into_a_bias(tmp_path):
    """The issue's case: x [1,3,3] @ W + c [3,1] was folded as a per-output bias."""
    c = np.array([[10.0], [20.0], [30.0]], np.float32)
    path = build(tmp_path, "col", [node("MatMul", ["x", "W"], ["h"], "mm"), node("Add", ["h", "c"], ["y"], "add")],
                 [const("W", np.eye(3, dtype=np.float32)), const("c", c)], [1, 3, 3])
    model = dv.load(path)
    y = model.forward(torch.zeros(1, 3, 3)).reshape(3, 3).numpy()
    np.testing.assert_array_equal(y, np.broadcast_to(c, (3, 3)))


# ----------------------------------------------------------------------------- Gemm

@pytest.mark.parametrize("attrs, c_shape, expected", [
    ({}, None, LOADED),
    ({}, (4,), LOADED),
    ({"transB": 1}, (4,), LOADED),
    ({"alpha": 0.5, "beta": -2.0}, (4,), LOADED),
    ({"alpha": 2.0, "beta": 3.0, "transB": 1}, (1,), LOADED),    # scalar bias C = [1] (was a traceback)
    ({}, (), LOADED),                                            # 0-d C
    ({"beta": 0.5}, (1, 4), LOADED),                             # 2-D C [1, n]
    ({}, (1, 1), LOADED),
    ({"transA": 1}, (4,), LOADED),                               # transposes dim 0: an explicit batch axis
], ids=["noC", "C", "transB", "alpha-beta", "scalarC", "0dC", "C1xn", "C1x1", "transA"])
def test_gemm(tmp_path, attrs, c_shape, expected):
    trans_b = attrs.get("transB", 0)
    b = rand((4, 3) if trans_b else (3, 4), 0)
    inputs = ["x", "B"] + (["C"] if c_shape is not None else [])
    inits = [const("B", b)] + ([const("C", rand(c_shape, 1))] if c_shape is not None else [])
    in_shape = [3, 1] if attrs.get("transA") else [1, 3]
    path = build(tmp_path, "gemm", [node("Gemm", inputs, ["h"], "gemm", **attrs), node("Relu", ["h"], ["y"])],
                 inits, in_shape)
    check(path, expected, *(("gemm", "transA") if expected == REFUSED else ()))


def test_gemm_with_constant_nodes(tmp_path):
    path = build(tmp_path, "gemmc", [const_node("B", rand((4, 3), 0)), const_node("C", rand((1, 4), 1)),
                                     node("Gemm", ["x", "B", "C"], ["y"], "gemm", transB=1)], [], [1, 3])
    check(path, LOADED)


# ----------------------------------------------------------------------------- constants, batch dims

def test_matmul_and_add_by_constant_nodes(tmp_path):
    """MatMul by a `Constant` node (the README lists it; it used to be refused)."""
    path = build(tmp_path, "cnode", [const_node("W", rand((3, 4), 0)), const_node("c", rand(4, 1)),
                                     node("MatMul", ["x", "W"], ["h"], "mm"), node("Add", ["h", "c"], ["r"], "add"),
                                     node("Relu", ["r"], ["y"])], [], [1, 3])
    check(path, LOADED)


def test_constant_computed_from_constants(tmp_path):
    """A weight computed by constant nodes (Constant -> Transpose -> Mul) is a constant too."""
    path = build(tmp_path, "cexpr", [const_node("W0", rand((4, 3), 0)), node("Transpose", ["W0"], ["Wt"], "tr"),
                                     const_node("two", 2.0), node("Mul", ["Wt", "two"], ["W"], "scale"),
                                     node("MatMul", ["x", "W"], ["y"], "mm")], [], [1, 3])
    check(path, LOADED)


def _dyn_shape_model(tmp_path, dims):
    return build(tmp_path, "dyn", [node("MatMul", ["x", "W"], ["y"], "mm")], [const("W", rand((3, 2), 0))], dims,
                 check=False)


def test_dynamic_batch_dim_is_accepted(tmp_path):
    path = _dyn_shape_model(tmp_path, ["batch", 3])
    model = dv.load(path)
    assert model.input_shape == (3,) and model.n_outputs == 2
    assert_matches_onnxruntime(model, path)


@pytest.mark.parametrize("dims, needle", [([1, "features"], "'features' at position 1"),
                                          (["n"], "'n' at position 0"),
                                          ([1, 0], "position 1")])
def test_dynamic_feature_dims_are_refused(tmp_path, dims, needle):
    check(_dyn_shape_model(tmp_path, dims), REFUSED, "input 'x'", needle)


# ----------------------------------------------------------------------------- ops the README lists

def test_div_by_constant_and_normalisation(tmp_path):
    path = build(tmp_path, "norm", [node("Sub", ["x", "mean"], ["a"], "sub"), node("Div", ["a", "std"], ["b"], "div"),
                                    node("MatMul", ["b", "W"], ["y"], "mm")],
                 [const("mean", [0.1, 0.2, 0.3]), const("std", [0.5, 2.0, 3.0]), const("W", rand((3, 2), 0))], [1, 3])
    check(path, LOADED)


@pytest.mark.parametrize("inputs, std, needle", [(["x", "std"], [1.0, 0.0, 2.0], "contains 0"),
                                                 (["std", "x"], [1.0, 1.0, 2.0], "not linear")],
                         ids=["by-zero", "constant-over-x"])
def test_div_refusals(tmp_path, inputs, std, needle):
    path = build(tmp_path, "div", [node("Div", inputs, ["y"], "div")], [const("std", std)], [1, 3])
    check(path, REFUSED, "div", needle)


@pytest.mark.parametrize("opset", [10, 12, 13])
def test_identity_and_dropout(tmp_path, opset):
    path = build(tmp_path, "idd", [node("Identity", ["x"], ["a"], "ident"), node("Dropout", ["a"], ["b"], "drop"),
                                   node("MatMul", ["b", "W"], ["y"], "mm")], [const("W", rand((3, 2), 0))], [1, 3],
                 opset=opset)
    check(path, LOADED)


def test_dropout_in_training_mode_is_refused(tmp_path):
    path = build(tmp_path, "dropt", [node("Dropout", ["x", "ratio", "train"], ["y"], "drop")],
                 [const("ratio", 0.5), helper.make_tensor("train", TensorProto.BOOL, [], [True])], [1, 3])
    check(path, REFUSED, "drop", "training_mode")


@pytest.mark.parametrize("op, in_shape, c_shape, expected", [
    ("Mul", [1, 1, 3], (4, 3), LOADED),         # the sample broadcast up [1, 3] -> [4, 3]
    ("Add", [1, 1, 3], (4, 1), LOADED),
    ("Mul", [1, 3], (4, 3), LOADED),            # [1, 3] * [4, 3] -> [4, 3]: dim 0 is data (batch_axis.py)
    ("Add", [1, 3], (2, 1, 3), LOADED),         # -> [2, 1, 3]
], ids=["mul-sample-up", "add-sample-up", "mul-batch-up", "add-batch-up"])
def test_broadcast_up_by_constant(tmp_path, op, in_shape, c_shape, expected):
    path = build(tmp_path, "bcast", [node(op, ["x", "c"], ["h"], "bin"), node("Relu", ["h"], ["y"])],
                 [const("c", rand(c_shape, 3))], in_shape)
    check(path, expected, *(("bin", "batch") if expected == REFUSED else ()))


@pytest.mark.parametrize("in_shape, target, expected", [
    ([1, 6], [1, 2, 3], LOADED),
    ([1, 2, 3], [1, 6], LOADED),
    ([1, 2, 3], [1, -1], LOADED),
    ([1, 6], [6, 1], LOADED),                   # dim 0 is data: an explicit batch axis (batch_axis.py)
    ([1, 6], [2, 3], LOADED),
    ([1, 6], [6], LOADED),
], ids=["split", "merge", "minus-one", "batch-moved", "batch-merged", "batch-dropped"])
def test_reshape_and_the_batch_dim(tmp_path, in_shape, target, expected):
    path = build(tmp_path, "resh", [node("Reshape", ["x", "shape"], ["r"], "resh"),
                                    node("MatMul", ["r", "W"], ["y"], "mm")],
                 [shape_const("shape", target), const("W", rand((target[-1] if target[-1] > 0 else 6, 2), 0))],
                 in_shape)
    check(path, expected, *(("resh", "batch") if expected == REFUSED else ()))


def test_conv_batchnorm_residual_flatten(tmp_path):
    """The README's other ops through ONNX: Conv, BatchNormalization, Add / Sub of two
    input-dependent tensors, Flatten, Gemm."""
    nodes = [node("Conv", ["x", "Wc", "bc"], ["c"], "conv", pads=[1, 1, 1, 1]),
             node("BatchNormalization", ["c", "g", "b", "m", "v"], ["n"], "bn"),
             node("Relu", ["n"], ["r"], "relu"), node("Add", ["r", "c"], ["s"], "res"),
             node("Sub", ["s", "n"], ["t"], "sub"), node("Flatten", ["t"], ["f"], "flat"),
             node("Gemm", ["f", "Wf"], ["y"], "fc", transB=1)]
    inits = [const("Wc", rand((2, 1, 3, 3), 0)), const("bc", rand(2, 1)), const("g", [1.5, 0.5]),
             const("b", [0.1, -0.2]), const("m", [0.05, -0.1]), const("v", [0.8, 1.2]),
             const("Wf", rand((3, 32), 2))]
    check(build(tmp_path, "cnn", nodes, inits, [1, 1, 4, 4]), LOADED)


# ----------------------------------------------------------------------------- opsets

@pytest.mark.parametrize("opset", [9, 11, 13, 17, 18, 21, 23, 28])
def test_opsets(tmp_path, opset):
    """A normalisation + MatMul/Add + Gemm + Reshape network at each opset (19+ are converted
    down to 17 for onnx2torch; onnxruntime checks the result on the original file). 28 is the
    newest opset of the pinned onnx."""
    nodes = [node("Sub", ["x", "mean"], ["a"], "sub"), node("Div", ["a", "std"], ["b"], "div"),
             node("Reshape", ["b", "shp"], ["c"], "resh"), node("MatMul", ["c", "W"], ["d"], "mm"),
             node("Add", ["d", "bias"], ["e"], "add"), node("Relu", ["e"], ["f"], "relu"),
             node("Gemm", ["f", "W2", "b2"], ["y"], "gemm", transB=1)]
    inits = [const("mean", 0.1), const("std", [2.0]), shape_const("shp", [1, 6]), const("W", rand((6, 5), 0)),
             const("bias", rand(5, 1)), const("W2", rand((3, 5), 2)), const("b2", rand(3, 3))]
    check(build(tmp_path, f"ops{opset}", nodes, inits, [1, 2, 3], opset=opset), LOADED)


# ----------------------------------------------------------------------------- dtypes, via the CLI

# float64 models are bounded in float64 (tests/test_ops_models.py); half precisions stay refused.
@pytest.mark.parametrize("elem_type, name", [(TensorProto.FLOAT16, "float16")])
def test_non_float32_models_are_refused_in_one_line(tmp_path, capsys, elem_type, name):
    from onnx import numpy_helper
    dtype = np.float64 if elem_type == TensorProto.DOUBLE else np.float16
    w = numpy_helper.from_array(rand((3, 2), 0).astype(dtype), "W")
    path = build(tmp_path, f"m_{name}", [node("MatMul", ["x", "W"], ["y"], "mm")], [w], [1, 3], elem_type=elem_type)
    lower, upper = tmp_path / "lo.txt", tmp_path / "hi.txt"
    lower.write_text("0 0 0")
    upper.write_text("1 1 1")
    rc = main(["bounds", path, "--lower", str(lower), "--upper", str(upper)])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and "ShapeProp" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("dtensor-verify: error: "), err
    assert path in lines[0] and "input 'x'" in lines[0] and name in lines[0], lines[0]


def test_absurd_thread_count_is_refused(capsys):
    rc = main(["--threads", "100000", "bounds", "model.onnx", "--lower", "a", "--upper", "b"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--threads 100000" in err, err
