"""Nonlinear elementwise ops: the relaxation lines hold on dense grids for random intervals and
any slope; whole networks: bounds hold for sampled / attacked points, CROWN <= IBP, alpha <=
CROWN, and (Sigmoid, Tanh, LeakyReLU) our CROWN is at least as tight as auto_LiRPA 0.3's."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from onnx import helper
from torch import nn

from dtensor_verify.ops import scalar_functions as sf
from dtensor_verify.ops.activation import ActivationOp
from onnx_factory import build, const, rand
from op_checks import check_network

FUNCS = {
    "sigmoid": (sf.Sigmoid(), None), "tanh": (sf.Tanh(), None), "exp": (sf.Exp(), None), "erf": (sf.Erf(), None),
    "log": (sf.Log(), "pos"), "reciprocal": (sf.Reciprocal(), "nonzero"), "sqrt": (sf.Sqrt(), "pos"),
    "pow2": (sf.Pow(2), None), "pow3": (sf.Pow(3), None), "pow_half": (sf.Pow(0.5), "pos"),
    "pow_m1": (sf.Pow(-1), "nonzero"), "pow_m2": (sf.Pow(-2), "nonzero"), "sin": (sf.Sin(), None),
    "cos": (sf.Cos(), None), "softplus": (sf.Softplus(), None), "gelu": (sf.Gelu(), None),
    "leaky": (sf.leaky_relu(0.2), None), "clip": (sf.clip(-0.5, 0.8), None), "abs": (sf.abs_fn(), None),
    "sign": (sf.Sign(), None), "floor": (sf.Floor(), None), "ceil": (sf.Ceil(), None), "max_c": (sf.Piecewise([0.3], [0.0, 1.0], 0.3), None),
}


def _intervals(kind, n, seed):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, generator=gen, dtype=torch.float64) * 3
    b = a + torch.rand(n, generator=gen, dtype=torch.float64) * torch.tensor([0.01, 1.0, 5.0, 20.0]).repeat(n // 4)
    if kind == "pos":
        a, b = a.abs() + 1e-3, b.abs() + a.abs() + 1e-3
    if kind == "nonzero":
        sign = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0).double()
        a, b = a.abs() + 0.05, a.abs() + 0.05 + (b - a)
        a, b = torch.where(sign > 0, a, -b), torch.where(sign > 0, b, -a)
    return a, torch.maximum(a, b)


@pytest.mark.parametrize("name", sorted(FUNCS))
def test_lines_hold_on_grid(name):
    """For random [l, u] and random slopes in (and beyond) f's slope range, the lower / upper lines
    of `intercepts` stay below / above f on a dense grid of [l, u]; CROWN's and alpha's lines too."""
    fn, kind = FUNCS[name]
    l, u = _intervals(kind, 32, 0)
    grid = l.unsqueeze(0) + (u - l).unsqueeze(0) * torch.linspace(0, 1, 501, dtype=torch.float64).unsqueeze(1)
    fx = fn.f(grid)
    kmin, kmax = sf.slope_range(fn, l, u)
    gen = torch.Generator().manual_seed(1)
    op = ActivationOp("a", fn)
    k_lo, k_up = op.default_slopes(l, u)
    slopes = [kmin, kmax, k_lo, k_up, kmin + torch.rand(32, generator=gen, dtype=torch.float64) * (kmax - kmin),
              torch.randn(32, generator=gen, dtype=torch.float64) * 3]
    for k in slopes:
        b_lo, b_up = sf.intercepts(fn, k, l, u)
        assert (k * grid + b_lo <= fx + 1e-9 * (1 + fx.abs())).all(), name
        assert (k * grid + b_up >= fx - 1e-9 * (1 + fx.abs())).all(), name
    lo, hi = sf.intercepts(fn, torch.zeros_like(l), l, u)
    assert (lo <= fx.min(0).values + 1e-12).all() and (hi >= fx.max(0).values - 1e-12).all()


class _Net(nn.Module):
    """x -> Linear -> (shift into the domain) -> f -> Linear."""

    def __init__(self, fn, domain=None):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)
        self.fn, self.domain = fn, domain

    def forward(self, x):
        h = self.a(x)
        if self.domain == "pos":
            h = torch.sigmoid(h) + 0.2
        elif self.domain == "nonzero":
            h = torch.sigmoid(h) + 0.2
            h = torch.cat([h[:, :3], -h[:, 3:]], 1)
        return self.b(self.fn(h))


TORCH = {"sigmoid": (nn.Sigmoid(), None, True), "tanh": (nn.Tanh(), None, True), "exp": (torch.exp, None, False),
         "log": (torch.log, "pos", False), "reciprocal": (torch.reciprocal, "nonzero", False),
         "sqrt": (torch.sqrt, "pos", False), "sin": (torch.sin, None, False), "cos": (torch.cos, None, False),
         "softplus": (nn.Softplus(), None, False), "gelu": (nn.GELU(), None, False),
         "leaky": (nn.LeakyReLU(0.1), None, True), "hardtanh": (nn.Hardtanh(-0.5, 0.7), None, False),
         "abs": (torch.abs, None, False), "sign": (torch.sign, None, False),
         "floor": (torch.floor, None, False), "ceil": (torch.ceil, None, False), "erf": (torch.erf, None, False)}


@pytest.mark.parametrize("name", sorted(TORCH))
def test_network_bounds(name, one_thread):
    fn, domain, lirpa = TORCH[name]
    check_network(_Net(fn, domain), (4,), seeds=(0,), width=1.0, lirpa=lirpa, alpha_iters=5)


def test_sin_wide_interval(one_thread):
    check_network(_Net(torch.sin), (4,), seeds=(2,), width=8.0)


def _onnx_net(tmp_path, name, nodes, inits):
    """x [1, 4] -> Gemm(6) -> (nodes: 'h' -> 'o') -> Gemm(3)."""
    all_nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1), *nodes,
                 helper.make_node("Gemm", ["o", "w2", "b2"], ["y"], transB=1)]
    inits = [const("w1", rand((6, 4), 1)), const("b1", rand((6,), 2)), const("w2", rand((3, 6), 3)),
             const("b2", rand((3,), 4)), *inits]
    return build(tmp_path, name, all_nodes, inits, [1, 4])


ONNX = {
    "pow2": ([helper.make_node("Pow", ["h", "p"], ["o"])], [const("p", 2.0)]),
    "pow3": ([helper.make_node("Pow", ["h", "p"], ["o"])], [const("p", 3.0)]),
    "clip": ([helper.make_node("Clip", ["h", "lo", "hi"], ["o"])], [const("lo", -0.3), const("hi", 0.4)]),
    "max_const": ([helper.make_node("Max", ["h", "c"], ["o"])], [const("c", rand((6,), 5))]),
    "min_const": ([helper.make_node("Min", ["c", "h"], ["o"])], [const("c", 0.1)]),
    "prelu": ([helper.make_node("PRelu", ["h", "s"], ["o"])], [const("s", rand((6,), 6))]),
    "leaky": ([helper.make_node("LeakyRelu", ["h"], ["o"], alpha=0.05)], []),
    "softplus_exp_log": ([helper.make_node("Softplus", ["h"], ["s"]), helper.make_node("Log", ["s"], ["e"]),
                          helper.make_node("Exp", ["e"], ["o"])], []),
    "neg_sin_cos": ([helper.make_node("Sin", ["h"], ["s"]), helper.make_node("Neg", ["s"], ["n"]),
                     helper.make_node("Cos", ["n"], ["o"])], []),
}


@pytest.mark.parametrize("case", sorted(ONNX))
def test_onnx_activation(tmp_path, case, one_thread):
    nodes, inits = ONNX[case]
    check_network(_onnx_net(tmp_path, case, nodes, inits), None, seeds=(0,), width=1.0, alpha_iters=5)
