"""LayerNorm (ops/layernorm.py): the normalised value's rules (entries sum to 0 and lie in
[-sqrt(N-1), sqrt(N-1)]), the decomposed ONNX pattern recognised, soundness (sampling + PGD, every
method), CROWN at least as tight as auto_LiRPA 0.3's on the same graph and tighter than the plain
decomposition (decompose.LAYERNORM_UNIT = False)."""
from __future__ import annotations

import math

import pytest
import torch

import dtensor_verify as dv
from dtensor_verify.ops import decompose
from dtensor_verify.ops.layernorm import LayerNormUnitOp
from layernorm_nets import Block, LinNorm, export
from op_checks import check_network, random_box


def _unit_points(n_pts, groups, n, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n_pts, groups, n, generator=gen) * torch.rand(n_pts, groups, 1, generator=gen) * 3
    q = n_pts // 4                    # one entry far from the others: near the +-sqrt(N-1) ends
    x[:q, :, 1:] = 1e-3 * x[:q, :, 1:]
    x[:q, :, 0] = torch.where(x[:q, :, 0] >= 0, 1.0, -1.0)
    return torch.nn.functional.layer_norm(x, (n,))


def test_unit_box_is_sound_and_tightens():
    ys = _unit_points(4000, 2, 5, 0)
    assert ys.abs().max() > 0.99 * math.sqrt(4)                # the bound sqrt(N-1) is nearly attained
    op = LayerNormUnitOp("u", (2,))
    lo, up = ys.min(0, keepdim=True).values - 0.05, ys.max(0, keepdim=True).values + 0.5
    lo2, up2 = op.ibp((lo, up))
    assert (ys >= lo2).all() and (ys <= up2).all()
    assert (lo2 >= lo).all() and (up2 <= up).all() and (up2 <= 2.0 + 1e-5).all() and (up2 < up).any()
    lo3, up3 = op.ibp((torch.tensor([[[1.0, -2.0, -0.1]]]), torch.tensor([[[1.5, -1.0, 0.2]]])))
    assert up3[0, 0, 2] <= 1.0 + 1e-5 and lo3[0, 0, 0] >= 1.0 - 1e-6


@pytest.mark.parametrize("gated", [False, True])
def test_shift_is_sound_for_every_parameter(gated):
    """(A - lam) . y + bias bounds A . y from the right side for every y with sum y = 0, whatever
    the gate (random in [0, 1])."""
    gen = torch.Generator().manual_seed(1)
    op = LayerNormUnitOp("u", (2,))
    A = torch.randn(1, 5, 2, 6, generator=gen)                   # [B, K, groups, n]
    width = torch.rand(1, 2, 6, generator=gen)
    ys = _unit_points(300, 2, 6, 2)
    alpha = torch.rand(2, 1, 5, 2, 1, generator=gen) if gated else None
    res = op.backward(A, A, [(-width, width)], alpha=alpha)
    exact = torch.einsum("kgn,pgn->pk", A[0], ys)
    for side, (bias, sign) in enumerate(((res.lbias, 1.0), (res.ubias, -1.0))):
        shifted = torch.einsum("kgn,pgn->pk", res.input_A[0][side][0], ys) + bias[0]
        assert (sign * (exact - shifted) >= -1e-6).all() and (exact - shifted).abs().max() < 1e-4


def _kinds(model):
    return [n.op.kind for n in model.graph.nodes if n.op is not None]


@pytest.mark.parametrize("opset", [13, 17])
def test_onnx_layernorm_recognised(opset, tmp_path, one_thread):
    """Opset 13 writes the chain (ReduceMean .. Sqrt, Div), 17 LayerNormalization: both become
    one Rsqrt, the product and the marker, and give the same bounds."""
    net = LinNorm().eval()
    model = dv.load(export(net, (4,), tmp_path / f"ln{opset}.onnx", opset))
    kinds = _kinds(model)
    assert "layernorm_unit" in kinds and "sqrt" not in kinds and "reciprocal" not in kinds, kinds
    lo, hi = random_box((4,), 0, 0.3)
    ref = dv.load(net, (4,)).compute_bounds(lo, hi, "crown")
    r = model.compute_bounds(lo, hi, "crown")
    assert torch.allclose(r.lower, ref.lower, atol=1e-4) and torch.allclose(r.upper, ref.upper, atol=1e-4)


def test_near_miss_chain_is_left_alone(one_thread):
    """A chain that is not a LayerNorm (variance over another dim than the mean) is not rewritten."""
    class Odd(LinNorm):
        def norm(self, h):
            c = h - h.mean(-1, keepdim=True)
            return c / torch.sqrt(torch.square(c).mean(-2, keepdim=True) + 1e-5)

    model = dv.load(Odd().eval(), (4,))
    assert "layernorm_unit" not in _kinds(model) and "reciprocal" in _kinds(model)


@pytest.mark.parametrize("manual", [False, True])
def test_sound_every_method(manual, one_thread):
    check_network(LinNorm(manual=manual).eval(), (4,), seeds=(0,), width=0.3, alpha_iters=4)


def test_block_sound_every_method(tmp_path, one_thread):
    """The transformer block from its ONNX export (the written-out LayerNorm chain)."""
    net = Block().eval()
    path = export(net, (3, 4), tmp_path / "block.onnx", 13)
    check_network(path, None, seeds=(0,), width=0.05, alpha_iters=3,
                  reference=lambda x: net(x.reshape(-1, 3, 4)).flatten(1))


def test_at_least_as_tight_as_auto_lirpa(one_thread):
    from lirpa_reference import lirpa_bounds

    for seed, manual in ((0, False), (1, False)):
        net = LinNorm(manual=manual, seed=seed).eval()
        lo, hi = random_box((4,), seed, 0.3)
        ll, lu = lirpa_bounds(net, lo, hi, "CROWN", bound_opts={"conv_mode": "matrix"})
        r = dv.load(net, (4,)).compute_bounds(lo, hi, "crown")
        assert (r.lower >= ll - 1e-5).all() and (r.upper <= lu + 1e-5).all()
        assert (r.upper - r.lower).mean() < (lu - ll).mean()


@pytest.mark.parametrize("which", ["linnorm", "manual", "block"])
def test_tighter_than_the_plain_decomposition(which, tmp_path, one_thread, monkeypatch):
    net = {"linnorm": LinNorm(), "manual": LinNorm(manual=True, seed=2), "block": Block()}[which].eval()
    shape = (3, 4) if which == "block" else (4,)
    lo, hi = random_box(shape, 0, 0.05 if which == "block" else 0.3)
    src = export(net, shape, tmp_path / "m.onnx", 13)
    new = dv.load(src).compute_bounds(lo, hi, "crown")
    monkeypatch.setattr(decompose, "LAYERNORM_UNIT", False)
    old = dv.load(src).compute_bounds(lo, hi, "crown")
    # (Per output not guaranteed: tighter intermediate boxes can change a later relaxation's choice.)
    assert (new.upper - new.lower).mean() < (old.upper - old.lower).mean()


class _ConvNorm(torch.nn.Module):
    """Conv -> LayerNorm over [C, H, W] (a group of three dims) -> Linear."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c, self.ln, self.f = torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.LayerNorm([2, 4, 4]), torch.nn.Linear(32, 3)

    def forward(self, x):
        return self.f(self.ln(self.c(x)).flatten(1))


def test_layernorm_over_several_dims(one_thread):
    model = check_network(_ConvNorm().eval(), (1, 4, 4), seeds=(0,), width=0.2, alpha_iters=3)
    units = [n.op for n in model.graph.nodes if isinstance(n.op, LayerNormUnitOp)]
    assert [u.dims for u in units] == [(1, 2, 3)]
