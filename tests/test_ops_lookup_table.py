"""ReLU lookup tables (ml4acopf 2024's linearised Sin / Cos / Sigmoid) fused into one
piecewise-linear activation: its lines hold on dense grids for random tables, intervals and
slopes; a network with the ONNX pattern is fused, its bounds hold for sampled / attacked
points (IBP, CROWN, alpha) and are tighter than the unfused ReLUs' (the point of the fusion)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper, numpy_helper

import dtensor_verify as dv
from dtensor_verify.ops import lookup_table as lt
from dtensor_verify.ops import scalar_functions as sf
from dtensor_verify.ops.activation import ActivationOp
from onnx_factory import build, const, rand
from op_checks import check_network, random_box


def _table(seed, k=9):
    gen = torch.Generator().manual_seed(seed)
    o = torch.randn(k, generator=gen, dtype=torch.float64) * 2          # unsorted on purpose
    w = torch.randn(k, generator=gen, dtype=torch.float64)
    return o, w


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lines_hold_on_grid(seed):
    o, w = _table(seed)
    fn = lt.LookupTable(o, w)
    gen = torch.Generator().manual_seed(10 + seed)
    l = torch.randn(64, generator=gen, dtype=torch.float64) * 3
    u = l + torch.rand(64, generator=gen, dtype=torch.float64) * torch.tensor([0.0, 0.05, 1.0, 8.0]).repeat(16)
    grid = l + (u - l) * torch.linspace(0, 1, 801, dtype=torch.float64).unsqueeze(1)
    fx = lt.relu_lookup(grid, o, w)                                   # the table's own arithmetic
    assert torch.allclose(fn.f(grid), fx, atol=1e-12)
    kmin, kmax = sf.slope_range(fn, l, u)
    d = (fx[1:] - fx[:-1]) / ((u - l) / 800).clamp(min=1e-12)
    wide = (u - l) > 1e-9
    assert ((d >= kmin - 1e-6) | ~wide).all() and ((d <= kmax + 1e-6) | ~wide).all()
    k_lo, k_up = ActivationOp("a", fn).default_slopes(l, u)
    for k in (kmin, kmax, k_lo, k_up, torch.randn(64, generator=gen, dtype=torch.float64) * 3):
        b_lo, b_up = sf.intercepts(fn, k, l, u)
        assert (k * grid + b_lo <= fx + 1e-9).all() and (k * grid + b_up >= fx - 1e-9).all()
    lo, hi = sf.intercepts(fn, torch.zeros_like(l), l, u)           # exact: the grid plus the breakpoints
    pts = torch.cat([grid, torch.minimum(torch.maximum(o.unsqueeze(1), l), u)])
    fp = lt.relu_lookup(pts, o, w)
    assert torch.allclose(lo, fp.min(0).values, atol=1e-9) and torch.allclose(hi, fp.max(0).values, atol=1e-9)


def _sin_table(k=13):
    """sin on [-4, 4] by k ReLUs, as the ml4acopf tables (slopes of the chords between breakpoints)."""
    o = torch.linspace(-4, 4, k, dtype=torch.float64)
    slopes = (torch.sin(o[1:]) - torch.sin(o[:-1])) / (o[1:] - o[:-1])
    w = torch.cat([slopes[:1], slopes[1:] - slopes[:-1], -slopes[-1:]])
    return o, w


def _lookup_net(tmp_path, table):
    """x [1, 4] -> Gemm(6) -> Unsqueeze(-1) - o -> Relu -> MatMul(w) + c -> square (a product, as
    ml4acopf's v_i v_j cos(t_i - t_j): it reads the table's intermediate bounds) -> Gemm(3)."""
    o, w = table
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
             helper.make_node("Unsqueeze", ["h", "ax"], ["hu"]), helper.make_node("Sub", ["hu", "o"], ["s"]),
             helper.make_node("Relu", ["s"], ["r"]), helper.make_node("MatMul", ["r", "w"], ["m"]),
             helper.make_node("Add", ["m", "c"], ["t"]), helper.make_node("Mul", ["t", "t"], ["tt"]),
             helper.make_node("Gemm", ["tt", "w2", "b2"], ["y"], transB=1)]
    inits = [const("w1", rand((6, 4), 1)), const("b1", rand((6,), 2)), const("w2", rand((3, 6), 3)),
             const("b2", rand((3,), 4)), const("o", o.numpy()), const("w", w.numpy()), const("c", 0.25),
             numpy_helper.from_array(np.asarray([-1], dtype=np.int64), "ax")]
    return build(tmp_path, "lookup", nodes, inits, [1, 4])


def test_network_fused_and_sound(tmp_path, one_thread):
    path = _lookup_net(tmp_path, _table(3))
    model = check_network(path, None, seeds=(0, 1), width=1.0, alpha_iters=5)
    kinds = [n.op.kind for n in model.graph.nodes if n.op is not None]
    assert "lookup_table" in kinds and "relu" not in kinds


def test_fused_tighter_than_relus(tmp_path, one_thread, monkeypatch):
    path = _lookup_net(tmp_path, _sin_table())
    lo, hi = random_box((4,), 0, width=1.0)
    fused = dv.load(path).compute_bounds(lo, hi, "crown")
    monkeypatch.setattr(lt, "_lookup_parts", lambda gm, node: None)
    plain_model = dv.load(path)
    assert "relu" in [n.op.kind for n in plain_model.graph.nodes if n.op is not None]
    plain = plain_model.compute_bounds(lo, hi, "crown")
    assert (fused.upper - fused.lower).sum() < 0.85 * (plain.upper - plain.lower).sum()
