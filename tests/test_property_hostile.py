"""Hostile properties: `sat` only with a counterexample that satisfies the property as written
(strict stays strict, no tolerance) with onnxruntime's float32 output, inside the box as parsed;
never `sat` for a property that is false; `unsat` only when it is proved."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper

import dtensor_verify as dv
from dtensor_verify.cli import main
from dtensor_verify.specs import parse_vnnlib, read_result_file, violates
from dtensor_verify.verify import AttackOptions, inside_box_f32, verify_instance
from onnx_factory import build, const, ort_runner

FAST = AttackOptions(restarts=8, steps=40, extra_rounds=1)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def identity_net(tmp_path_factory):
    """y = x for one input: the largest Y_0 over [0, 2] is exactly 2.0."""
    path = build(tmp_path_factory.mktemp("ident"), "ident",
                 [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], [const("W", [[1.0]])], [1, 1])
    return dv.load(path), path


def prop(body: str, box: str = "(assert (>= X_0 0.0)) (assert (<= X_0 2.0))"):
    return parse_vnnlib(f"(declare-const X_0 Real) (declare-const Y_0 Real) {box} {body}")


def decide(identity_net, p):
    model, path = identity_net
    return verify_instance(model, p, path, timeout=30, attack_options=FAST)


def assert_sound_sat(res, p, path):
    """A sat verdict's witness holds as written: inside the box exactly, onnxruntime's output."""
    assert res.verdict == "sat", res
    x, y = res.counterexample
    assert np.array_equal(x.astype(np.float32).astype(np.float64), x)       # what onnxruntime ran
    y_ort = ort_runner(path)(x)
    np.testing.assert_array_equal(y, y_ort)
    assert violates(p, x, y_ort)


# ------------------------------------------------------------------------------- verdicts

@pytest.mark.parametrize("body, allowed", [
    ("(assert (> Y_0 Y_0))", {"unsat"}),                 # never true (was sat)
    ("(assert (< Y_0 Y_0))", {"unsat"}),
    ("(assert (>= Y_0 2.0000001))", {"unsat", "unknown"}),   # max is exactly 2.0 (was sat, Y_0 = 2.0)
    ("(assert (> Y_0 2.0))", {"unsat", "unknown"}),      # strict: 2.0 is not > 2.0
    ("(assert (and (>= Y_0 1.0) (<= Y_0 0.5)))", {"unsat", "unknown"}),   # contradictory
    ("(assert (= Y_0 3.0))", {"unsat", "unknown"}),      # out of reach
    ("(assert (or))", {"unsat"}),                        # empty disjunction: false
    ("(assert (< 1 1))", {"unsat"}),                     # false constant
], ids=["gt-self", "lt-self", "ge-above-max", "gt-max", "contradiction", "eq-out-of-range", "empty-or",
        "false-constant"])
def test_false_properties_are_never_sat(identity_net, body, allowed):
    res = decide(identity_net, prop(body))
    assert res.verdict in allowed, res


@pytest.mark.parametrize("body", [
    "(assert (>= Y_0 2.0))",                 # reached exactly at X_0 = 2.0
    "(assert (>= Y_0 Y_0))",                 # tautology: every output is unsafe
    "(assert (<= 1 1))",                     # true constant
    "(assert (and))",                        # empty conjunction: true
    "(assert (< Y_0 0.5))",
    "(assert (or (> Y_0 5.0) (<= Y_0 0.0)))",
], ids=["ge-max", "tautology", "true-constant", "empty-and", "lt", "or"])
def test_true_properties_are_sat_with_a_witness_that_holds(identity_net, body):
    p = prop(body)
    res = decide(identity_net, p)
    assert_sound_sat(res, p, identity_net[1])


def assert_real_pin_sat(res, p, path, lo, hi):
    """A sat witness on a coordinate whose range holds no float32: written as a real of the box
    (float64, exactly inside), and the output is onnxruntime's on its nearest float32, as a checker
    that reads the witness and feeds the float32 model computes it."""
    assert res.verdict == "sat", res
    x, y = res.counterexample
    assert lo <= x[0] <= hi and x.dtype == np.float64
    y_ort = ort_runner(path)(x.astype(np.float32))
    np.testing.assert_array_equal(y, y_ort)
    assert violates(p, x, y_ort)


def test_point_box_not_representable_in_float32_is_written_exactly(identity_net):
    """X_0 = 0.1 exactly (VNN-LIB declares it Real): no float32 equals 0.1, so the witness is
    written as 0.1 itself and the network runs on float32(0.1) = 0.10000000149. (The old pipeline
    claimed X_0 = 0.0999999940, outside the box; the one after it claimed nothing, so every
    collins_rul_cnn instance, whose pinned inputs are decimals, could never be sat.)"""
    p = prop("(assert (>= Y_0 0.1))", "(assert (>= X_0 0.1)) (assert (<= X_0 0.1))")
    res = decide(identity_net, p)
    assert_real_pin_sat(res, p, identity_net[1], 0.1, 0.1)
    assert res.counterexample[0].tolist() == [0.1]


def test_point_box_pinned_witness_is_never_claimed_on_a_false_output(identity_net):
    """Y_0 >= 0.10000001 is false at float32(0.1) = 0.10000000149: never sat."""
    res = decide(identity_net, prop("(assert (>= Y_0 0.10000001))", "(assert (>= X_0 0.1)) (assert (<= X_0 0.1))"))
    assert res.verdict in {"unsat", "unknown", "timeout"}, res


def test_point_box_representable_in_float32_is_sat(identity_net):
    p = prop("(assert (>= Y_0 0.0))", "(assert (>= X_0 0.5)) (assert (<= X_0 0.5))")
    res = decide(identity_net, p)
    assert_sound_sat(res, p, identity_net[1])
    assert res.counterexample[0].tolist() == [0.5]


def test_open_box_without_a_float32_inside_is_written_as_a_real(identity_net):
    """0 < X_0 < 1e-46 holds reals but no float32 (the smallest positive one is 1.4e-45): the
    witness is a real strictly inside, run as float32 0."""
    p = prop("(assert (>= Y_0 -1.0))", "(assert (> X_0 0.0)) (assert (< X_0 1e-46))")
    res = decide(identity_net, p)
    assert_real_pin_sat(res, p, identity_net[1], 0.0, 1e-46)
    assert 0.0 < res.counterexample[0][0] < 1e-46


def test_strict_input_bound_is_kept_in_the_witness(identity_net):
    """Y_0 <= 0 is reached only at X_0 = 0, which the strict bound excludes."""
    res = decide(identity_net, prop("(assert (<= Y_0 0.0))", "(assert (> X_0 0.0)) (assert (<= X_0 2.0))"))
    assert res.verdict != "sat", res


def test_run_writes_no_sat_for_a_false_property(tmp_path, identity_net, capsys):
    spec = tmp_path / "p.vnnlib"
    spec.write_text("(declare-const X_0 Real) (declare-const Y_0 Real) (assert (>= X_0 0.0)) "
                    "(assert (<= X_0 2.0)) (assert (>= Y_0 2.0000001))")
    out = tmp_path / "result.txt"
    rc = main(["run", "--onnx", identity_net[1], "--vnnlib", str(spec), "--results", str(out), "--timeout", "30",
               "--quiet"])
    assert rc == 0
    assert read_result_file(out)[0] in ("unsat", "unknown")


# ------------------------------------------------------------------------------- the reader

def test_strictness_is_recorded():
    p = parse_vnnlib("(declare-const X_0 Real) (declare-const X_1 Real) (declare-const Y_0 Real) "
                     "(declare-const Y_1 Real) (assert (> X_0 0)) (assert (<= X_0 1)) (assert (>= X_1 0)) "
                     "(assert (< X_1 1)) (assert (or (and (< Y_0 Y_1) (>= Y_0 -1)) (and (= Y_1 2))))")
    (region,) = p.regions
    assert region.lower_strict.tolist() == [True, False] and region.upper_strict.tolist() == [False, True]
    strict, equal = region.disjuncts
    assert strict.strict.tolist() == [True, False] and strict.C.shape == (2, 2)
    assert equal.strict.tolist() == [False, False] and equal.C.tolist() == [[0.0, 1.0], [0.0, -1.0]]


def test_tighter_or_equal_strict_bound_wins():
    p = parse_vnnlib("(declare-const X_0 Real) (declare-const Y_0 Real) (assert (>= X_0 0)) (assert (> X_0 0)) "
                     "(assert (<= X_0 1)) (assert (< X_0 2)) (assert (<= Y_0 0))")
    (region,) = p.regions
    assert region.lower_strict.tolist() == [True] and region.upper_strict.tolist() == [False]


def test_empty_open_box_is_an_error():
    with pytest.raises(dv.InputSpecError, match="X_0 has an empty range"):
        parse_vnnlib("(declare-const X_0 Real) (declare-const Y_0 Real) (assert (> X_0 0.5)) "
                     "(assert (<= X_0 0.5)) (assert (<= Y_0 0))")


# ------------------------------------------------------------------------------- violates

P = parse_vnnlib("(declare-const X_0 Real) (declare-const Y_0 Real) (declare-const Y_1 Real) "
                 "(assert (> X_0 0.0)) (assert (<= X_0 1.0)) (assert (or (and (> Y_0 2.0)) (and (<= Y_1 -1.0))))")


@pytest.mark.parametrize("x, y, expected", [
    (0.5, [2.0, 0.0], False),                       # strict row at equality
    (0.5, [np.nextafter(2.0, 3.0), 0.0], True),
    (0.5, [0.0, -1.0], True),                       # non-strict row at equality
    (0.0, [3.0, -5.0], False),                      # strict box side at equality
    (1.0, [3.0, -5.0], True),                       # non-strict box side at equality
    (np.nextafter(1.0, 2.0), [3.0, -5.0], False),
], ids=["strict-eq", "strict-above", "nonstrict-eq", "open-side", "closed-side", "outside"])
def test_violates_is_exact_and_strict(x, y, expected):
    assert violates(P, np.array([x]), np.array(y)) is expected


def test_violates_sums_are_exact():
    """Y_0 + Y_1 <= 2^54 at Y = (2^54, 1): false, though float64 rounds the sum to 2^54."""
    p = parse_vnnlib("(declare-const X_0 Real) (declare-const Y_0 Real) (declare-const Y_1 Real) "
                     "(assert (>= X_0 0)) (assert (<= X_0 1)) (assert (<= (+ Y_0 Y_1) 18014398509481984))")
    assert not violates(p, np.array([0.5]), np.array([2.0 ** 54, 1.0]))
    assert violates(p, np.array([0.5]), np.array([2.0 ** 54, 0.0]))


# ------------------------------------------------------------------------------- float32 witnesses

@pytest.mark.parametrize("x, lo, hi, lo_strict, hi_strict, expected", [
    (0.1, 0.1, 0.1, False, False, None),                              # no float32 is 0.1
    (0.5, 0.5, 0.5, False, False, 0.5),
    (0.3, 0.1, 0.2, False, False, np.nextafter(np.float32(0.2), np.float32(0))),   # float32(0.2) > 0.2
    (0.0, 0.0, 1.0, True, False, np.nextafter(np.float32(0), np.float32(1))),   # open side: step inside
    (0.0, 0.0, 1e-46, True, True, None),
], ids=["point-0.1", "point-0.5", "clip-high", "open-low", "open-empty"])
def test_inside_box_f32(x, lo, hi, lo_strict, hi_strict, expected):
    got = inside_box_f32(np.array([x]), np.array([lo]), np.array([hi]), np.array([lo_strict]),
                          np.array([hi_strict]))
    if expected is None:
        assert got is None
    else:
        assert got is not None and got.dtype == np.float32 and got[0] == np.float32(expected)
        v = float(got[0])
        assert (v > lo if lo_strict else v >= lo) and (v < hi if hi_strict else v <= hi)


@pytest.mark.parametrize("x, lo, hi, ls, hs, written", [
    ([0.3, 0.05], [0.1, 0.0], [0.1, 1.0], False, False, [0.1, np.float32(0.05)]),   # pinned real, free float32
    ([0.0], [0.0], [1e-46], True, True, [5e-47]),                                   # open, no float32: midpoint
    ([0.5], [0.5], [0.5], False, False, [0.5]),
], ids=["pinned-and-free", "open-tiny", "representable"])
def test_witness_point(x, lo, hi, ls, hs, written):
    from dtensor_verify.verify import witness_point
    n = len(x)
    w, fed = witness_point(np.array(x), np.array(lo), np.array(hi), np.full(n, ls), np.full(n, hs))
    assert w.dtype == np.float64 and fed.dtype == np.float32
    np.testing.assert_array_equal(w, np.array(written, dtype=np.float64))
    np.testing.assert_array_equal(fed, w.astype(np.float32))


def test_witness_point_empty_box_is_none():
    from dtensor_verify.verify import witness_point
    assert witness_point(np.array([0.0]), np.array([1.0]), np.array([-1.0])) is None
    assert witness_point(np.array([0.0]), np.array([0.1]), np.array([0.1]), np.array([True]), None) is None
