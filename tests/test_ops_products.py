"""Ops of two activations and decomposed ops: Mul (with broadcasting), MatMul (attention-like),
Div, Max / Min of two, Softmax / LogSoftmax, LayerNorm, MaxPool2d (torch modules and ONNX).
Bounds hold for sampled / attacked points, CROWN <= IBP, alpha <= CROWN, and where auto_LiRPA
0.3 handles the graph our CROWN is at least as tight."""
from __future__ import annotations

import pytest
import torch
from onnx import helper
from torch import nn

from onnx_factory import build, const, rand
from op_checks import check_network


class _Two(nn.Module):
    """x -> two Linear branches (one through tanh) -> combine -> Linear."""

    def __init__(self, combine, n=6, out=6):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.c = nn.Linear(4, n), nn.Linear(4, n), nn.Linear(out, 3)
        self.combine = combine

    def forward(self, x):
        return self.c(self.combine(self.a(x), torch.tanh(self.b(x))).flatten(1))


class _Attention(nn.Module):
    """Single-head self-attention over 3 tokens of width 4, then a Linear."""

    def __init__(self, norm=False):
        super().__init__()
        torch.manual_seed(0)
        self.q, self.k, self.v = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4) if norm else nn.Identity()
        self.out = nn.Linear(12, 2)

    def forward(self, x):                      # x [3, 4]
        x = self.norm(x)
        att = torch.softmax(self.q(x) @ self.k(x).transpose(1, 2) * 0.5, dim=-1)
        return self.out((att @ self.v(x)).flatten(1))


TWO = {
    "mul": (lambda x, y: x * y, 6, True),
    "mul_broadcast": (lambda x, y: x.reshape(-1, 2, 3) * y[:, :3].reshape(-1, 1, 3), 6, False),
    "div": (lambda x, y: x / (y + 2.0), 6, False),
    "max": (torch.maximum, 6, False),
    "min": (torch.minimum, 6, False),
    "matmul": (lambda x, y: x.reshape(-1, 2, 3) @ y.reshape(-1, 3, 2), 4, True),
}


@pytest.mark.parametrize("name", sorted(TWO))
def test_two_activations(name, one_thread):
    fn, out, lirpa = TWO[name]
    check_network(_Two(fn, out=out).eval(), (4,), seeds=(0,), width=0.5, lirpa=lirpa, alpha_iters=5)


@pytest.mark.parametrize("norm", [False, True])
def test_attention(norm, one_thread):
    check_network(_Attention(norm).eval(), (3, 4), seeds=(0,), width=0.1, alpha_iters=3)


def test_log_softmax(one_thread):
    check_network(_Two(lambda x, y: torch.log_softmax(x + y, dim=1)).eval(), (4,), seeds=(0,), width=0.5)


class _Pool(nn.Module):
    def __init__(self, pool):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.pool, self.fc = nn.Conv2d(1, 2, 3, padding=1), pool, None

    def forward(self, x):
        y = self.pool(torch.relu(self.conv(x)) - 0.1)
        return y.flatten(1)[:, :4]


@pytest.mark.parametrize("pool", ["k2s2", "k3s1p1", "k3s2p1"])
def test_maxpool(pool, one_thread):
    mod = {"k2s2": nn.MaxPool2d(2), "k3s1p1": nn.MaxPool2d(3, 1, 1), "k3s2p1": nn.MaxPool2d(3, 2, 1)}[pool]
    check_network(_Pool(mod).eval(), (1, 4, 4), seeds=(0,), width=0.3, alpha_iters=3)


def test_onnx_softmax_maxpool(tmp_path, one_thread):
    """The ONNX forms (onnx2torch's Softmax of opset 11 flattens from its axis; MaxPool with pads)."""
    nodes = [helper.make_node("Conv", ["x", "cw", "cb"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("MaxPool", ["c"], ["p"], kernel_shape=[2, 2], strides=[1, 1], pads=[0, 0, 1, 1]),
             helper.make_node("Softmax", ["p"], ["s"], axis=2),
             helper.make_node("Flatten", ["s"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "gw", "gb"], ["y"], transB=1)]
    inits = [const("cw", rand((2, 1, 3, 3), 1)), const("cb", rand((2,), 2)), const("gw", rand((3, 32), 3)),
             const("gb", rand((3,), 4))]
    path = build(tmp_path, "softmax_maxpool", nodes, inits, [1, 1, 4, 4], opset=11)
    check_network(path, None, seeds=(0,), width=0.3, alpha_iters=3)


def test_softmax_ibp_stays_within_0_1_on_a_wide_box():
    """The pairwise differences' |W| is 0 on the diagonal (x_i - x_i is exactly 0): IBP of the
    decomposed softmax keeps each output within [0, 1] on a wide box (it was ~1e8 before), and
    the bounds hold for sampled points."""
    import dtensor_verify as dv

    net = torch.nn.Sequential(torch.nn.Softmax(dim=1))
    model = dv.load(net, (3,))
    lo, hi = torch.full((1, 3), -10.0), torch.full((1, 3), 10.0)
    for method in ("ibp", "crown"):
        r = model.compute_bounds(lo, hi, method)
        assert (r.lower >= 0).all() and (r.upper <= 1 + 1e-6).all(), (method, r.lower, r.upper)
        xs = lo + (hi - lo) * torch.rand(2000, 3, generator=torch.Generator().manual_seed(0))
        ys = net(xs)
        assert (ys >= r.lower - 1e-6).all() and (ys <= r.upper + 1e-6).all()
