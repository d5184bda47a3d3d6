"""Softmax over n > 2 entries ends in `softmax_sum_one` (ops/softmax_sum.py): its box rule and its
CROWN step use sum_i y_i = 1. Sound (sampling + PGD, every method), never looser than the plain
decomposition (decompose.SOFTMAX_SUM_ONE = False) and strictly tighter on these graphs."""
from __future__ import annotations

import os

import pytest
import torch

import dtensor_verify as dv
from dtensor_verify.ops import decompose
from dtensor_verify.ops.softmax_sum import shift_rows, sum_one_box
from op_checks import check_network, random_box
from test_ops_products import _Attention


class _Soft(torch.nn.Module):
    """Linear -> softmax over n entries (scaled logits) -> Linear."""

    def __init__(self, n=5, scale=3.0):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.scale = torch.nn.Linear(4, n), torch.nn.Linear(n, 3), scale

    def forward(self, x):
        return self.b(torch.softmax(self.a(x) * self.scale, dim=-1))


NETS = {"soft5": (lambda: _Soft(), (4,), 0.5), "soft8": (lambda: _Soft(8, 1.0), (4,), 1.0),
        "attention": (lambda: _Attention(), (3, 4), 0.1), "attention_ln": (lambda: _Attention(True), (3, 4), 0.1)}


def _softmax_points(n_pts, n, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.softmax(3 * torch.randn(n_pts, n, generator=gen), -1)


def test_sum_one_box_is_sound_and_tightens():
    ys = _softmax_points(4000, 4, 0)
    lo, up = ys.min(0, keepdim=True).values - 0.01, ys.max(0, keepdim=True).values + 0.3
    lo2, up2 = sum_one_box(lo, up, 1)
    assert (ys >= lo2).all() and (ys <= up2).all()
    assert (lo2 >= lo).all() and (up2 <= up).all() and (up2 <= 1).all()
    box_lo, box_up = torch.tensor([[0.7, 0.0, 0.0]]), torch.tensor([[1.0, 0.1, 0.1]])
    lo3, up3 = sum_one_box(box_lo, box_up, 1)
    assert lo3[0, 0] >= 0.8 - 1e-5 and up3[0, 0] == 1.0 and (up3[0, 1:] == 0.1).all()


def test_shift_rows_is_exact_on_softmax_points():
    """(A - lam) . y + bias equals A . y for every y with sum y = 1, less / plus the rounding margin."""
    gen = torch.Generator().manual_seed(1)
    A = torch.randn(1, 5, 2, 6, generator=gen)                   # [B, K, groups, n]
    width = torch.rand(1, 2, 6, generator=gen)
    ys = torch.softmax(torch.randn(300, 2, 6, generator=gen), -1)
    for lower in (True, False):
        A2, bias = shift_rows(A, width, 2, lower)
        exact = torch.einsum("kgn,pgn->pk", A[0], ys)
        shifted = torch.einsum("kgn,pgn->pk", A2[0], ys) + bias[0]
        assert (exact - shifted).abs().max() < 1e-4
        assert ((shifted <= exact + 1e-6) if lower else (shifted >= exact - 1e-6)).all()     # margin's side
        assert not torch.equal(A2, A)


@pytest.mark.parametrize("name", ["soft5", "attention_ln"])
def test_sound_every_method(name, one_thread):
    make, shape, width = NETS[name]
    check_network(make().eval(), shape, seeds=(0,), width=width, alpha_iters=3)


def _crown(net, shape, lo, hi, flag, monkeypatch):
    monkeypatch.setattr(decompose, "SOFTMAX_SUM_ONE", flag)
    return dv.load(net, shape).compute_bounds(lo, hi, "crown")


@pytest.mark.parametrize("name", sorted(NETS))
def test_never_looser_and_tighter_than_the_plain_decomposition(name, one_thread, monkeypatch):
    make, shape, width = NETS[name]
    net = make().eval()
    lo, hi = random_box(shape, 1, width)
    old = _crown(net, shape, lo, hi, False, monkeypatch)
    new = _crown(net, shape, lo, hi, True, monkeypatch)
    assert (new.lower >= old.lower - 1e-6).all() and (new.upper <= old.upper + 1e-6).all()
    assert (new.upper - new.lower).mean() < 0.995 * (old.upper - old.lower).mean()


VIT = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "benchmarks", "vit_2023"))


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(VIT), reason="benchmarks not available")
def test_vit_crown_tighter_and_sound(one_thread, monkeypatch):
    """vit_2023 pgd_2_3_16 on its first instance's box: CROWN with the sum-to-one rule is never
    looser per logit, tighter on average, and holds for sampled points (~40 s on a busy CPU)."""
    from dtensor_verify.specs.vnnlib import read_vnnlib

    onnx_path = os.path.join(VIT, "onnx", "pgd_2_3_16.onnx.gz")
    region = read_vnnlib(os.path.join(VIT, "vnnlib", "pgd_2_3_16_8835.vnnlib")).regions[0]
    lo = torch.as_tensor(region.lower, dtype=torch.float32).reshape(1, 3, 32, 32)
    hi = torch.as_tensor(region.upper, dtype=torch.float32).reshape(1, 3, 32, 32)
    old = _crown(onnx_path, None, lo, hi, False, monkeypatch)
    new = _crown(onnx_path, None, lo, hi, True, monkeypatch)
    assert (new.lower >= old.lower - 1e-6).all() and (new.upper <= old.upper + 1e-6).all()
    assert (new.upper - new.lower).mean() < 0.9 * (old.upper - old.lower).mean()
    xs = lo + (hi - lo) * torch.rand(200, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ys = dv.load(onnx_path).forward(xs)
    assert (ys >= new.lower - 1e-5).all() and (ys <= new.upper + 1e-5).all()
