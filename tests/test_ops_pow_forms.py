"""Pow forms rewritten at load (dtensor_verify/onnx_pow.py): exponent 0, several integer exponents,
a perturbed exponent of a constant base, base and exponent both perturbed. Each model loads
(self-check against onnxruntime) and its bounds hold for sampled and attacked points; a constant
base <= 0 with a perturbed exponent is refused in one line."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import dtensor_verify as dv
from onnx_factory import build, const, rand
from op_checks import check_network


def _n(op, ins, outs, **attrs):
    return helper.make_node(op, ins, outs, **attrs)


HEAD = [_n("Gemm", ["x", "w", "b"], ["g"], transB=1), _n("Sigmoid", ["g"], ["s"])]     # s in (0, 1)
CASES = {
    "exponent_zero": ([_n("Pow", ["g", "z"], ["p"]), _n("Add", ["p", "g"], ["y"])], [const("z", np.float32(0.0))]),
    "integer_exponents": ([_n("Pow", ["g", "e"], ["y"])], [const("e", np.array([2.0, 3.0, 0.0], np.float32))]),
    "constant_base": ([_n("Pow", ["c", "g"], ["y"])], [const("c", np.array([2.0, 0.5, 3.0], np.float32))]),
    "both_perturbed": ([_n("Pow", ["s", "g"], ["y"])], []),
}


@pytest.mark.parametrize("case", [c if c == "both_perturbed" else pytest.param(c, marks=pytest.mark.slow) for c in CASES])
def test_pow_forms_sound(tmp_path, case):
    nodes, inits = CASES[case]
    inits = [const("w", rand((3, 3), 1)), const("b", rand((3,), 2)), *inits]
    path = build(tmp_path, case, HEAD + nodes, inits, [1, 3])
    check_network(path, None, seeds=(0,), width=0.5, alpha_iters=3)


def test_nonpositive_base_with_perturbed_exponent_refused(tmp_path):
    nodes = [_n("Pow", ["c", "x"], ["y"], name="the_pow")]
    path = build(tmp_path, "negbase", nodes, [const("c", np.float32(-2.0))], [1, 2])
    with pytest.raises(dv.VerifierError) as exc:
        dv.load(path)
    assert "\n" not in str(exc.value) and "'the_pow'" in str(exc.value)


def test_mul_of_a_tensor_by_itself_is_a_square(tmp_path):
    """x * x is bounded as x ** 2: sound, and never below 0 (McCormick's planes for two
    independent factors would give a negative lower bound on a box around 0)."""
    nodes = [_n("Mul", ["g", "g"], ["y"])]
    path = build(tmp_path, "square", HEAD + nodes, [const("w", rand((3, 3), 1)), const("b", rand((3,), 2))], [1, 3])
    model = check_network(path, None, seeds=(0,), width=1.0, alpha_iters=3)
    import torch

    lo, hi = torch.full((1, 3), -1.0), torch.full((1, 3), 1.0)
    assert (model.compute_bounds(lo, hi, "crown").lower >= 0).all()
