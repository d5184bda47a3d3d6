"""Integer Mul (and the Pow a square becomes) inside the integer-cast rewrite
(`onnx_int_casts.py`): exact against onnxruntime, bounds against samples, the queries' verdicts,
and the per-tensor guard (a product past 2^24 is `unknown`, never a verdict)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from test_vnnlib2 import verify
from test_vnnlib2_suspects import _query, _save, _vi

pytestmark = pytest.mark.usefixtures("one_thread")

DECL = ("(declare-input A float32 [1]) (declare-input B float32 [1]) "
        "(declare-output P float32 [1]) (declare-output S float32 [1]) (declare-output C float32 [1])")


def _mul_net(tmp_path, to=TensorProto.INT64) -> str:
    """P = trunc(a) * trunc(b), S = trunc(a) * trunc(a) (a Pow after the ONNX rewrites),
    C = trunc(b) * 3 - 1, each computed in `to` and cast back to float."""
    dt = np.int32 if to == TensorProto.INT32 else np.int64
    inits = [numpy_helper.from_array(np.asarray([3], dt), "three"), numpy_helper.from_array(np.asarray([1], dt), "one")]
    nodes = [helper.make_node("Cast", ["a"], ["ai"], to=to), helper.make_node("Cast", ["b"], ["bi"], to=to),
             helper.make_node("Mul", ["ai", "bi"], ["pi"]), helper.make_node("Mul", ["ai", "ai"], ["si"]),
             helper.make_node("Mul", ["bi", "three"], ["ti"]), helper.make_node("Sub", ["ti", "one"], ["ci"])]
    nodes += [helper.make_node("Cast", [i], [o], to=TensorProto.FLOAT) for i, o in (("pi", "p"), ("si", "s"), ("ci", "c"))]
    return _save(tmp_path, nodes, [_vi("a", TensorProto.FLOAT, [1]), _vi("b", TensorProto.FLOAT, [1])],
                 [_vi(n, TensorProto.FLOAT, [1]) for n in "psc"], inits, name=f"mul{to}.onnx")


def _box(lo, hi):
    return "".join(f"(assert (>= {v}[0] {float(a)!r})) (assert (<= {v}[0] {float(b)!r}))\n"
                   for v, a, b in zip("AB", lo, hi))


def test_int_mul_exact_and_bounds_sound(tmp_path):
    from dtensor_verify.multinet import check_mapping, load_product
    from dtensor_verify.specs.vnnlib2 import read_query
    from dtensor_verify.specs.vnnlib2_property import build_property

    net = _mul_net(tmp_path)
    q = read_query(_query(tmp_path, DECL, _box([-3.5, -2.25], [2.75, 4.5]) + "(assert (>= P[0] 100.0))"))
    prop = build_property(q)
    product = load_product(q, check_mapping(q, {"N": net}), prop.M, "cpu")
    assert product.int_casts
    r = prop.regions[0]
    rng = np.random.default_rng(0)
    zs = np.concatenate([rng.uniform(r.lower, r.upper, (200, 2)), [[-3.0, 4.0], [-0.5, -2.0], [2.0, -1.0]]])
    got = product.model.forward(torch.tensor(zs, dtype=torch.float32)).detach().numpy()
    want = np.stack([product.values_vector(z) for z in zs])
    assert np.array_equal(got, want)                   # the rewrite is exact (onnxruntime on the file)
    lo, hi = (torch.tensor(a[None], dtype=torch.float32) for a in (r.lower, r.upper))
    for method in ("ibp", "crown"):
        b = product.model.compute_bounds(lo, hi, method=method)
        assert np.all(want >= b.lower.numpy()) and np.all(want <= b.upper.numpy())
    b = product.model.compute_bounds(lo, hi, method="ibp")
    # trunc(a) in [-3, 2], trunc(b) in [-2, 4]: S in [0, 9] (as a square), C = 3 trunc(b) - 1 in [-7, 11]
    assert b.lower[0, 3] >= 0 and b.upper[0, 3] <= 9
    assert (b.lower[0, 4], b.upper[0, 4]) == (-7, 11)


@pytest.mark.parametrize("to", [TensorProto.INT64, TensorProto.INT32])
def test_int_mul_queries(tmp_path, capsys, to):
    net = _mul_net(tmp_path, to)
    box = _box([2.1, -1.9], [2.9, -1.1])                   # trunc: a = 2, b = -1
    # P = -2 exactly (a float product would reach -5.51); C = -4; S = 4
    for atom, want in (("(< P[0] -2.0)", "unsat"), ("(== P[0] -2.0)", "sat"), ("(> S[0] 4.0)", "unsat"),
                       ("(< C[0] -4.0)", "unsat"), ("(== C[0] -4.0)", "sat")):
        rc, out, err = verify(capsys, _query(tmp_path, DECL, box + f"(assert {atom})"), "--network", f"N={net}")
        assert (rc, out.splitlines()[0]) == (0, want), (atom, err)


def test_int_mul_past_exact_range_is_unknown(tmp_path, capsys):
    """|trunc(a) * trunc(b)| up to 4e8 > 2^24 (and an int32 product would wrap past 2^31 further
    on): the rewrite's guard fails, the answer is unknown with the reason."""
    net = _mul_net(tmp_path, TensorProto.INT32)
    box = _box([1.0, 1.0], [20000.0, 20000.0])
    rc, out, err = verify(capsys, _query(tmp_path, DECL, box + "(assert (< P[0] 0.0))"), "--network", f"N={net}")
    assert (rc, out.splitlines()[0]) == (0, "unknown") and "integer cast" in err


@pytest.mark.parametrize("e, want", [(1, (-3, 2, -1, 4)), (3, (-27, 8, -1, 64)), (4, (0, 81, 0, 256))])
def test_int_pow_by_constant_exact_and_bounds(tmp_path, e, want):
    """Pow(trunc(x), e) with an int64 exponent 1, 3, 4: bitwise onnxruntime, IBP / CROWN bounds
    contain samples; IBP is the exact integer range (trunc(x) in [-3, 2] and [-1, 4])."""
    from dtensor_verify.multinet import check_mapping, load_product
    from dtensor_verify.specs.vnnlib2 import read_query
    from dtensor_verify.specs.vnnlib2_property import build_property

    nodes = [helper.make_node("Cast", ["x"], ["xi"], to=TensorProto.INT64), helper.make_node("Pow", ["xi", "e"], ["p"]),
             helper.make_node("Cast", ["p"], ["y"], to=TensorProto.FLOAT)]
    net = _save(tmp_path, nodes, [_vi("x", TensorProto.FLOAT, [2])], [_vi("y", TensorProto.FLOAT, [2])],
                [numpy_helper.from_array(np.array(e, np.int64), "e")], name=f"pow{e}.onnx")
    body = "(assert (and (>= X[0] -3.5) (<= X[0] 2.7) (>= X[1] -1.2) (<= X[1] 4.9))) (assert (>= Y[0] 1000.0))"
    q = read_query(_query(tmp_path, "(declare-input X float32 [2]) (declare-output Y float32 [2])", body))
    prop = build_property(q)
    product = load_product(q, check_mapping(q, {"N": net}), prop.M, "cpu")
    assert product.int_casts
    r = prop.regions[0]
    zs = np.concatenate([np.random.default_rng(0).uniform(r.lower, r.upper, (300, 2)), [[-3.0, 4.0], [2.0, -1.0]]])
    got = product.model.forward(torch.tensor(zs, dtype=torch.float32)).detach().numpy()
    values = np.stack([product.values_vector(z) for z in zs])
    assert np.array_equal(got, values)
    lo, hi = (torch.tensor(a[None], dtype=torch.float32) for a in (r.lower, r.upper))
    for method in ("ibp", "crown"):
        b = product.model.compute_bounds(lo, hi, method=method)
        assert np.all(values >= b.lower.numpy()) and np.all(values <= b.upper.numpy())
    b = product.model.compute_bounds(lo, hi, method="ibp")
    assert (b.lower[0, 2], b.upper[0, 2], b.lower[0, 3], b.upper[0, 3]) == want
